//! Which files hold a model's weights, chosen the way vLLM chooses them
//! (vllm/model_executor/model_loader/weight_utils.py): safetensors first, each indexed shard
//! once; else pickled PyTorch files; else GGUF.

use std::path::{Path, PathBuf};

use super::WeightsError;

/// Weight files found in a model directory, in vLLM's order of preference.
pub(super) enum Weights {
    /// Safetensors files, each once.
    Safetensors(Vec<PathBuf>),
    /// Pickled PyTorch files (`.bin`, `.pt`): only their sizes are known.
    Pickled(Vec<PathBuf>),
    /// GGUF files: their sizes are the weights.
    Gguf(Vec<PathBuf>),
}

/// Files vLLM skips as not needed for inference (`filter_files_not_needed_for_inference`,
/// vllm/model_executor/model_loader/weight_utils.py).
const NOT_WEIGHTS: &[&str] = &[
    "training_args.bin",
    "optimizer.bin",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
];

pub(super) fn files_with(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, WeightsError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| WeightsError::new(dir, format!("cannot list it: {e}")))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_suffix(ext)
                .is_some_and(|stem| stem.ends_with('.'))
                && !NOT_WEIGHTS.contains(&name.as_ref())
                // The directory entry's type costs no stat; a symlink (the Hugging Face
                // cache links to blobs) is followed.
                && e.file_type()
                    .is_ok_and(|t| t.is_file() || (t.is_symlink() && e.path().is_file()))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// With an index (`model.safetensors.index.json`), only the shards its `weight_map` names,
/// each once: repositories often ship a consolidated copy beside the shards, and vLLM loads
/// only the indexed ones (`filter_duplicate_safetensors_files`, weight_utils.py).
fn indexed(dir: &Path, index: &str, found: Vec<PathBuf>) -> Result<Vec<PathBuf>, WeightsError> {
    let path = dir.join(index);
    let Ok(text) = std::fs::read(&path) else {
        return Ok(found);
    };
    let Index(mut names) = serde_json::from_slice(&text)
        .map_err(|e| WeightsError::new(&path, format!("not a valid index ({e})")))?;
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let shard = dir.join(&n);
            if found.contains(&shard) {
                Ok(shard)
            } else {
                Err(WeightsError::new(
                    &path,
                    format!("lists shard {n} which is missing; the download is incomplete"),
                ))
            }
        })
        .collect()
}

/// The shard names of an index's `weight_map`, consecutive repeats dropped (its keys, the
/// tensor names, are skipped without being copied).
struct Index(Vec<String>);

impl<'de> serde::Deserialize<'de> for Index {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, Visitor};
        struct Found(Vec<String>);
        impl<'de> serde::Deserialize<'de> for Found {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Found;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a weight_map of tensor names to shard files")
                    }
                    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Found, M::Error> {
                        let mut out: Vec<String> = Vec::new();
                        while m.next_key::<IgnoredAny>()?.is_some() {
                            let shard: std::borrow::Cow<'de, str> = m.next_value()?;
                            if out.last().map(String::as_str) != Some(shard.as_ref()) {
                                out.push(shard.into_owned());
                            }
                        }
                        Ok(Found(out))
                    }
                }
                d.deserialize_map(V)
            }
        }
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = Index;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object with a weight_map")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Index, M::Error> {
                let mut found = None;
                while let Some(key) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "weight_map" {
                        found = Some(m.next_value::<Found>()?.0);
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                found
                    .map(Index)
                    .ok_or_else(|| serde::de::Error::missing_field("weight_map"))
            }
        }
        d.deserialize_map(Top)
    }
}

pub(super) fn find_weights(path: &Path) -> Result<Weights, WeightsError> {
    if path.is_file() {
        return match path.extension().and_then(|e| e.to_str()) {
            Some("gguf") => Ok(Weights::Gguf(vec![path.to_path_buf()])),
            Some("safetensors") => Ok(Weights::Safetensors(vec![path.to_path_buf()])),
            _ => Err(WeightsError::new(
                path,
                "is a file but neither a .gguf nor a .safetensors model".into(),
            )),
        };
    }
    let st = files_with(path, "safetensors")?;
    if !st.is_empty() {
        return Ok(Weights::Safetensors(indexed(
            path,
            "model.safetensors.index.json",
            st,
        )?));
    }
    let bin = files_with(path, "bin")?;
    if !bin.is_empty() {
        return Ok(Weights::Pickled(indexed(
            path,
            "pytorch_model.bin.index.json",
            bin,
        )?));
    }
    let pt = files_with(path, "pt")?;
    if !pt.is_empty() {
        return Ok(Weights::Pickled(pt));
    }
    let gguf = files_with(path, "gguf")?;
    if !gguf.is_empty() {
        return Ok(Weights::Gguf(gguf));
    }
    Err(WeightsError::new(
        path,
        "has no weight files (*.safetensors, *.bin, *.pt or *.gguf); vLLM would find nothing to load"
            .into(),
    ))
}
