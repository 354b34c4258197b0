//! Reads the header of a `*.safetensors` file, never its tensors: an 8-byte little-endian
//! length, then that many bytes of JSON mapping each tensor name to its dtype, shape and
//! byte range (<https://github.com/huggingface/safetensors>, "Format").

use std::io::Read;
use std::path::Path;

use super::WeightsError;

/// The safetensors crate refuses headers above 100 MB (`MAX_HEADER_SIZE`); so do we.
const MAX_HEADER: u64 = 100_000_000;

/// One tensor as its header declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Its name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Its safetensors dtype, e.g. `BF16`.
    pub dtype: String,
    /// Number of elements (product of the shape).
    pub numel: u64,
    /// Number of dimensions.
    pub ndim: usize,
    /// Bytes it occupies in the file.
    pub bytes: u64,
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
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| err(format!("the header is not valid JSON ({e})")))?;
    let data_len = file_len - 8 - header_len;
    let mut tensors = Vec::with_capacity(map.len());
    let mut total: u64 = 0;
    for (name, entry) in map {
        if name == "__metadata__" {
            continue;
        }
        let t = tensor(&name, &entry).map_err(|why| err(format!("tensor {name:?}: {why}")))?;
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

fn tensor(name: &str, entry: &serde_json::Value) -> Result<Tensor, String> {
    let dtype = entry
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or("has no dtype")?;
    let shape = entry
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or("has no shape")?;
    let mut numel: u64 = 1;
    for dim in shape {
        let d = dim
            .as_u64()
            .ok_or("has a shape that is not whole numbers")?;
        numel = numel
            .checked_mul(d)
            .ok_or("claims more elements than any file can hold")?;
    }
    let offsets = entry
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .filter(|o| o.len() == 2)
        .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
        .ok_or("has no data_offsets [begin, end]")?;
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
        name: name.to_string(),
        dtype: dtype.to_string(),
        numel,
        ndim: shape.len(),
        bytes,
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
