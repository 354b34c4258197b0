//! Reads the header of a `*.safetensors` file, never its tensors: an 8-byte little-endian
//! length, then that many bytes of JSON mapping each tensor name to its dtype, shape and
//! byte range (<https://github.com/huggingface/safetensors>, "Format").

use std::io::Read;
use std::path::Path;

use super::WeightsError;

/// The safetensors crate refuses headers above 100 MB (`MAX_HEADER_SIZE`); so do we.
const MAX_HEADER: u64 = 100_000_000;

/// One tensor as its header declares it: what sizing needs, nothing copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tensor {
    /// Number of elements (product of the shape).
    pub numel: u64,
    /// Bytes it occupies in the file.
    pub bytes: u64,
    /// A 16/32/64-bit float tensor, which vLLM converts to the model's dtype.
    pub floating: bool,
    /// A 2-D weight other than the embedding or LM head: what online quantization shrinks.
    pub linear: bool,
}

/// Bits per element of a safetensors dtype; `None` for one this reader does not know.
pub fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// Reads and checks every tensor entry of the header of `path`.
pub fn read(path: &Path) -> Result<Vec<Tensor>, WeightsError> {
    let err = |problem: String| WeightsError::new(path, problem);
    let mut file =
        std::fs::File::open(path).map_err(|e| err(format!("cannot open the weights: {e}")))?;
    let file_len = file
        .metadata()
        .map_err(|e| err(format!("cannot read the weights: {e}")))?
        .len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| {
        err(format!(
            "truncated: {file_len} bytes is too short for a safetensors header"
        ))
    })?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER {
        return Err(err(format!(
            "the header claims {header_len} bytes, over safetensors' limit of 100 MB; the file is corrupt"
        )));
    }
    if 8 + header_len > file_len {
        return Err(err(format!(
            "truncated: the header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| err(format!("cannot read the header: {e}")))?;
    let header = &header[..];
    let Header(entries) = serde_json::from_slice(header).map_err(|e| {
        err(format!(
            "the header is not a valid safetensors header ({e})"
        ))
    })?;
    let data_len = file_len - 8 - header_len;
    let mut tensors = Vec::with_capacity(entries.len());
    let mut total: u64 = 0;
    for (name, entry) in entries {
        let t = tensor(&name, entry).map_err(|why| err(format!("tensor {name:?}: {why}")))?;
        total = total.saturating_add(t.bytes);
        tensors.push(t);
    }
    if total > data_len {
        return Err(err(format!(
            "the header declares {} of tensors but the file holds {} of data; the file is \
             truncated or corrupt",
            human(total),
            human(data_len)
        )));
    }
    Ok(tensors)
}

/// One header entry as written; names and dtypes are borrowed from the header bytes when
/// they hold no escapes (typed parsing: about five times faster than a `serde_json::Value`).
#[derive(serde::Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    dtype: std::borrow::Cow<'a, str>,
    shape: Dims,
    data_offsets: (u64, u64),
}

/// A shape, read without allocating: the product of its dimensions (`None` on overflow) and
/// how many there are.
struct Dims {
    numel: Option<u64>,
    ndim: usize,
}

impl<'de> serde::Deserialize<'de> for Dims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Dims;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of dimensions")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<Dims, S::Error> {
                let mut dims = Dims {
                    numel: Some(1),
                    ndim: 0,
                };
                while let Some(d) = seq.next_element::<u64>()? {
                    dims.numel = dims.numel.and_then(|n| n.checked_mul(d));
                    dims.ndim += 1;
                }
                Ok(dims)
            }
        }
        d.deserialize_seq(Visit)
    }
}

/// The header: every tensor entry, `__metadata__` skipped.
struct Header<'a>(Vec<(std::borrow::Cow<'a, str>, Entry<'a>)>);

impl<'de> serde::Deserialize<'de> for Header<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Header<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensors")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Header<'de>, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(64));
                while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if name == "__metadata__" {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    } else {
                        out.push((name, map.next_value::<Entry<'de>>()?));
                    }
                }
                Ok(Header(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

fn tensor(name: &str, entry: Entry<'_>) -> Result<Tensor, String> {
    let dtype = entry.dtype.as_ref();
    let numel = entry
        .shape
        .numel
        .ok_or("claims more elements than any file can hold")?;
    let offsets = entry.data_offsets;
    if offsets.1 < offsets.0 {
        return Err("has data_offsets that end before they begin".into());
    }
    let span = offsets.1 - offsets.0;
    let bytes = match dtype_bits(dtype) {
        Some(bits) => {
            let bits = numel
                .checked_mul(bits)
                .ok_or("claims more bytes than any file can hold")?;
            let bytes = bits.div_ceil(8);
            if bytes != span {
                return Err(format!(
                    "its {dtype} shape needs {bytes} bytes but its data_offsets span {span}"
                ));
            }
            bytes
        }
        None => span,
    };
    Ok(Tensor {
        numel,
        bytes,
        floating: matches!(dtype, "F16" | "BF16" | "F32" | "F64"),
        linear: entry.shape.ndim == 2 && !name.contains("embed") && !name.contains("lm_head"),
    })
}

/// A byte count in the largest binary unit below it, for messages about absurd sizes.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Writes a safetensors file whose header declares `tensors` (name, dtype, shape) over a
/// sparse data section of the right size: a "70 GB" checkpoint costs no disk. For tests and
/// the benchmark.
pub fn write_sparse(path: &Path, tensors: &[(String, &str, Vec<u64>)]) -> std::io::Result<u64> {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        let bits = dtype_bits(dtype).expect("a known dtype");
        let bytes = (shape.iter().product::<u64>() * bits).div_ceil(8);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut text = serde_json::to_vec(&header)?;
    // The format pads the header with spaces to an 8-byte boundary.
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(&(text.len() as u64).to_le_bytes())?;
    f.write_all(&text)?;
    f.set_len(8 + text.len() as u64 + offset)?;
    Ok(offset)
}
