//! Reads the metadata of a GGUF file (llama.cpp's format, which vLLM also loads): the few
//! keys that size the KV cache. The tensors are never read; the weights count as the file's
//! size. Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

use std::io::{BufReader, Read};
use std::path::Path;

use super::WeightsError;
use super::model_config::Shape;

/// Guards against a corrupt file making the reader allocate or loop forever.
const MAX_STRING: u64 = 64 << 20;
const MAX_ITEMS: u64 = 1 << 28;

enum Meta {
    Int(u64),
    Text(String),
    Other,
}

struct Reader<R> {
    r: R,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|_| "truncated metadata".to_string())?;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(format!("a metadata string claims {len} bytes"));
        }
        let mut buf = vec![0u8; len as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|_| "truncated metadata".to_string())?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
    fn skip(&mut self, n: u64) -> Result<(), String> {
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        if copied == n {
            Ok(())
        } else {
            Err("truncated metadata".into())
        }
    }
    /// One value of GGUF type `t`; integers are kept, strings kept, the rest skipped.
    fn value(&mut self, t: u32) -> Result<Meta, String> {
        Ok(match t {
            0 | 1 | 7 => Meta::Int(u64::from(self.bytes::<1>()?[0])),
            2 | 3 => Meta::Int(u64::from(u16::from_le_bytes(self.bytes()?))),
            4 | 5 => Meta::Int(u64::from(self.u32()?)),
            6 => {
                self.skip(4)?;
                Meta::Other
            }
            10 | 11 => Meta::Int(self.u64()?),
            12 => {
                self.skip(8)?;
                Meta::Other
            }
            8 => Meta::Text(self.string()?),
            9 => {
                let item = self.u32()?;
                let count = self.u64()?;
                if count > MAX_ITEMS {
                    return Err(format!("a metadata array claims {count} items"));
                }
                let width = match item {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match width {
                    Some(w) => self.skip(w * count)?,
                    None => {
                        for _ in 0..count {
                            self.value(item)?;
                        }
                    }
                }
                Meta::Other
            }
            other => return Err(format!("unknown metadata type {other}")),
        })
    }
}

/// The KV-cache shape a GGUF file's metadata describes.
pub fn read(path: &Path) -> Result<Shape, WeightsError> {
    let err = |why: String| WeightsError::new(path, why);
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open it: {e}")))?;
    let mut r = Reader {
        r: BufReader::with_capacity(1 << 20, file),
    };
    let magic: [u8; 4] = r
        .bytes()
        .map_err(|_| err("not a GGUF file (too short)".into()))?;
    if &magic != b"GGUF" {
        return Err(err("not a GGUF file (no GGUF magic)".into()));
    }
    let version = r.u32().map_err(&err)?;
    if version < 2 {
        return Err(err(format!(
            "GGUF version {version} is too old; convert it again"
        )));
    }
    let _tensors = r.u64().map_err(&err)?;
    let count = r.u64().map_err(&err)?;
    if count > MAX_ITEMS {
        return Err(err(format!("claims {count} metadata entries")));
    }
    let mut ints = std::collections::HashMap::new();
    let mut arch = None;
    for _ in 0..count {
        let key = r.string().map_err(&err)?;
        let t = r.u32().map_err(&err)?;
        match r.value(t).map_err(&err)? {
            Meta::Int(v) => {
                ints.insert(key, v);
            }
            Meta::Text(s) if key == "general.architecture" => arch = Some(s),
            _ => {}
        }
    }
    let arch = arch.ok_or_else(|| err("has no general.architecture".into()))?;
    let get = |k: &str| ints.get(&format!("{arch}.{k}")).copied();
    let missing = |k: &str| err(format!("has no {arch}.{k}; cannot size the KV cache"));
    let layers = get("block_count").ok_or_else(|| missing("block_count"))?;
    let heads = get("attention.head_count").ok_or_else(|| missing("attention.head_count"))?;
    let embedding = get("embedding_length").ok_or_else(|| missing("embedding_length"))?;
    if layers == 0 || heads == 0 || layers > 100_000 || heads > 100_000 {
        return Err(err(format!("has {layers} layers and {heads} heads")));
    }
    let key = get("attention.key_length").unwrap_or(embedding / heads);
    let value = get("attention.value_length").unwrap_or(key);
    let kv_heads = get("attention.head_count_kv").unwrap_or(heads).max(1);
    let max_len = get("context_length").unwrap_or(2048);
    Ok(Shape {
        model_type: arch,
        layers,
        kv_heads,
        kv_width: key + value,
        max_len,
        // vLLM runs GGUF models in 16-bit (it refuses float32 for them).
        dtype: Some("float16".into()),
        windows: vec![None; layers as usize],
        mla: false,
        encoder_only: false,
    })
}

/// Writes a minimal GGUF file with these integer (u32) metadata entries and an architecture,
/// padded with a sparse region to `size` bytes. For tests.
pub fn write_minimal(
    path: &Path,
    arch: &str,
    ints: &[(&str, u32)],
    size: u64,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(ints.len() as u64 + 1).to_le_bytes());
    let key = |out: &mut Vec<u8>, k: &str| {
        out.extend_from_slice(&(k.len() as u64).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
    };
    key(&mut out, "general.architecture");
    out.extend_from_slice(&8u32.to_le_bytes());
    key(&mut out, arch);
    for (k, v) in ints {
        key(&mut out, &format!("{arch}.{k}"));
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(&out)?;
    f.set_len(size.max(out.len() as u64))
}
