//! `MODELMUX_GPUS`: a count `N`, a comma list of indices or of UUIDs, `none`, or GPUs with
//! their memory sizes (`4x80GiB`, `0:24GiB,1:24GiB`, `GPU-...:80GiB`) for tests and machines
//! without NVML.

use super::{Gpu, GpuError, GpuSource, Inventory};

/// A parsed `MODELMUX_GPUS` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuOverride {
    /// `none`: engines get no GPU.
    None,
    /// `N`: GPUs `0..N`.
    Count(u32),
    /// `0,2,3`: these indices.
    Indices(Vec<u32>),
    /// `GPU-...,MIG-...`: these UUIDs, passed to engines as UUIDs.
    Uuids(Vec<String>),
    /// `4x80GiB`, `0:24GiB,1:24GiB` or `GPU-a:80GiB,...`: GPUs with their memory sizes.
    Sized(Vec<SizedGpu>),
}

/// One GPU of a sized override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizedGpu {
    /// Its index (the position in the list for UUIDs).
    pub index: u32,
    /// Its UUID when the override named one; engines then get the UUID.
    pub uuid: Option<String>,
    /// Its memory in bytes.
    pub bytes: u64,
}

const FORMS: &str = "use a count (4), indices (0,2,3), UUIDs (GPU-...,GPU-...), sizes \
                     (4x80GiB or 0:24GiB,1:24GiB) or none";

/// The largest GPU memory a size may claim: far above any GPU made, far below nonsense.
const MAX_GPU_BYTES: u64 = 64 << 40;

fn is_uuid(s: &str) -> bool {
    s.starts_with("GPU-") || s.starts_with("MIG-")
}

/// Parses a memory size such as `80GiB`, `79.6 GiB`, `24576MiB` or `80GB`. The unit is
/// required: a bare number is ambiguous.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let scale: f64 = match unit.as_str() {
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "" => return Err(format!("size {t:?} has no unit; write it like 80GiB")),
        _ => {
            return Err(format!(
                "size {t:?} has an unknown unit; use MiB, GiB or TiB (or MB, GB, TB)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("size {t:?} is not a number with a unit such as 80GiB"))?;
    let bytes = value * scale;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("size {t:?} must be above 0"));
    }
    if bytes > MAX_GPU_BYTES as f64 {
        return Err(format!("size {t:?} is more memory than any GPU has"));
    }
    Ok(bytes as u64)
}

impl GpuOverride {
    /// Parses the variable; errors name it and show the accepted forms.
    pub fn parse(value: &str) -> Result<Self, GpuError> {
        let bad = |why: &str| GpuError::bad_override(value, format!("{why}; {FORMS}"));
        let text = value.trim();
        if text.eq_ignore_ascii_case("none") {
            return Ok(GpuOverride::None);
        }
        if text.is_empty() {
            return Err(bad("is empty"));
        }
        if let Some((count, size)) = text.split_once(['x', 'X'])
            && !text.contains(',')
            && !is_uuid(text)
        {
            let n: u32 = count
                .trim()
                .parse()
                .map_err(|_| bad(&format!("{count:?} before x is not a count")))?;
            if n == 0 || n > 1024 {
                return Err(bad("the count before x must be 1 to 1024"));
            }
            let bytes = parse_size(size).map_err(|e| bad(&e))?;
            return Ok(GpuOverride::Sized(
                (0..n)
                    .map(|index| SizedGpu {
                        index,
                        uuid: None,
                        bytes,
                    })
                    .collect(),
            ));
        }
        let items: Vec<&str> = text.split(',').map(str::trim).collect();
        if items.iter().any(|i| i.is_empty()) {
            return Err(bad("has an empty entry"));
        }
        let sized = items.iter().filter(|i| i.contains(':')).count();
        if sized > 0 {
            if sized < items.len() {
                return Err(bad("gives sizes for some GPUs but not all"));
            }
            return Self::parse_sized(&items).map_err(|e| bad(&e));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = items.iter().find(|i| !seen.insert(**i)) {
            return Err(bad(&format!("lists {dup} twice")));
        }
        if items.iter().all(|i| is_uuid(i)) {
            return Ok(GpuOverride::Uuids(
                items.iter().map(|s| s.to_string()).collect(),
            ));
        }
        let numbers: Option<Vec<u32>> = items.iter().map(|i| i.parse().ok()).collect();
        match numbers {
            Some(n) if n.len() == 1 && !text.contains(',') => match n[0] {
                0 => Err(bad("a count of 0; use none for no GPU")),
                count if count > 1024 => Err(bad("more GPUs than any machine has")),
                count => Ok(GpuOverride::Count(count)),
            },
            Some(n) => Ok(GpuOverride::Indices(n)),
            // All digits, too large for a u32: still a count or an index, just impossible.
            None if items.iter().all(|i| i.bytes().all(|b| b.is_ascii_digit())) => {
                Err(bad("more GPUs than any machine has"))
            }
            None => Err(bad("is neither a count, indices nor UUIDs")),
        }
    }

    /// `ID:SIZE,...` where every ID is an index, or every ID a UUID.
    fn parse_sized(items: &[&str]) -> Result<Self, String> {
        let mut gpus = Vec::with_capacity(items.len());
        let mut seen = std::collections::HashSet::new();
        for (pos, item) in items.iter().enumerate() {
            let (id, size) = item.rsplit_once(':').expect("counted as sized");
            let id = id.trim();
            if !seen.insert(id.to_string()) {
                return Err(format!("lists {id} twice"));
            }
            let bytes = parse_size(size)?;
            let gpu = if is_uuid(id) {
                SizedGpu {
                    index: pos as u32,
                    uuid: Some(id.to_string()),
                    bytes,
                }
            } else {
                let index = id
                    .parse()
                    .map_err(|_| format!("{id:?} is neither a GPU index nor a UUID"))?;
                SizedGpu {
                    index,
                    uuid: None,
                    bytes,
                }
            };
            gpus.push(gpu);
        }
        if gpus.iter().any(|g| g.uuid.is_some()) && gpus.iter().any(|g| g.uuid.is_none()) {
            return Err("mixes indices and UUIDs".into());
        }
        Ok(GpuOverride::Sized(gpus))
    }

    /// Whether the override gives memory sizes (then NVML is not consulted).
    pub fn has_sizes(&self) -> bool {
        matches!(self, GpuOverride::Sized(_))
    }

    /// The inventory this override stands for. It has no topology: all pairs are equal.
    pub fn inventory(&self) -> Inventory {
        let gpu = |index: u32, uuid: String, visible_id: String, bytes: u64| Gpu {
            index,
            uuid,
            name: "unknown".into(),
            memory_total: bytes,
            memory_free: bytes,
            visible_id,
            memory_measured: false,
        };
        let gpus = match self {
            GpuOverride::None => Vec::new(),
            GpuOverride::Count(n) => (0..*n)
                .map(|i| gpu(i, String::new(), i.to_string(), 0))
                .collect(),
            GpuOverride::Indices(list) => list
                .iter()
                .map(|&i| gpu(i, String::new(), i.to_string(), 0))
                .collect(),
            GpuOverride::Uuids(list) => list
                .iter()
                .enumerate()
                .map(|(i, u)| gpu(i as u32, u.clone(), u.clone(), 0))
                .collect(),
            GpuOverride::Sized(list) => list
                .iter()
                .map(|g| match &g.uuid {
                    Some(u) => gpu(g.index, u.clone(), u.clone(), g.bytes),
                    None => gpu(g.index, String::new(), g.index.to_string(), g.bytes),
                })
                .collect(),
        };
        Inventory {
            source: GpuSource::Override,
            note: None,
            disabled: *self == GpuOverride::None,
            gpus,
            distance: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn every_form_parses() {
        assert_eq!(GpuOverride::parse("none").unwrap(), GpuOverride::None);
        assert_eq!(GpuOverride::parse(" 4 ").unwrap(), GpuOverride::Count(4));
        assert_eq!(
            GpuOverride::parse("0,2,3").unwrap(),
            GpuOverride::Indices(vec![0, 2, 3])
        );
        assert!(GpuOverride::parse("5,").is_err());
        let u = GpuOverride::parse("GPU-aa, MIG-bb").unwrap();
        assert_eq!(
            u,
            GpuOverride::Uuids(vec!["GPU-aa".into(), "MIG-bb".into()])
        );
        let inv = u.inventory();
        assert_eq!(inv.gpus[1].visible_id, "MIG-bb");
        assert_eq!(GpuOverride::Count(2).inventory().gpus[1].visible_id, "1");
        assert!(GpuOverride::None.inventory().disabled);
    }

    #[test]
    fn sizes_parse_in_both_forms() {
        let four = GpuOverride::parse("4x80GiB").unwrap();
        let inv = four.inventory();
        assert_eq!(inv.gpus.len(), 4);
        assert!(inv.gpus.iter().all(|g| g.memory_total == 80 * GIB));
        assert_eq!(inv.gpus[3].visible_id, "3");
        let two = GpuOverride::parse("0:24GiB, 2:48GiB").unwrap().inventory();
        assert_eq!(two.gpus[1].index, 2);
        assert_eq!(two.gpus[1].memory_total, 48 * GIB);
        assert_eq!(two.gpus[1].memory_free, 48 * GIB);
        let uuids = GpuOverride::parse("GPU-a:80GiB,GPU-b:80GiB")
            .unwrap()
            .inventory();
        assert_eq!(uuids.gpus[1].visible_id, "GPU-b");
        assert_eq!(parse_size("24576MiB").unwrap(), 24 * GIB);
        assert_eq!(parse_size("80GB").unwrap(), 80_000_000_000);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 3 * GIB / 2);
        assert!(GpuOverride::parse("4x80GiB").unwrap().has_sizes());
        assert!(!GpuOverride::parse("4").unwrap().has_sizes());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (value, why) in [
            ("two", "is neither a count"),
            ("0", "a count of 0"),
            ("2000", "more GPUs than any machine has"),
            ("99999999999999", "more GPUs than any machine has"),
            ("1,1", "lists 1 twice"),
            ("", "is empty"),
            ("0,GPU-a", "is neither"),
            ("4x80", "size \"80\" has no unit"),
            ("4x80XB", "size \"80XB\" has an unknown unit"),
            ("0x80GiB", "the count before x must be 1 to 1024"),
            ("4x0GiB", "must be above 0"),
            ("2x9PiB", "unknown unit"),
            ("2x90000TiB", "more memory than any GPU has"),
            ("0:24GiB,1", "gives sizes for some GPUs but not all"),
            ("0:24GiB,0:24GiB", "lists 0 twice"),
            ("a:24GiB", "\"a\" is neither a GPU index nor a UUID"),
            ("0:GiB", "is not a number"),
        ] {
            let e = GpuOverride::parse(value).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("MODELMUX_GPUS={value:?}: {why}"))
                    || e.starts_with(&format!("MODELMUX_GPUS={value:?}: size")) && e.contains(why),
                "{value}: {e}"
            );
            assert!(e.contains("4x80GiB"), "the forms are listed: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
