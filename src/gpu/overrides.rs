//! `MODELMUX_GPUS`: a count `N`, a comma list of indices or of UUIDs, or `none`.

use super::{Gpu, GpuSource, Inventory};
use crate::config::ConfigError;

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
}

const VAR: &str = "MODELMUX_GPUS";

impl GpuOverride {
    /// Parses the variable; errors name it and show the accepted forms.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError::var(
                VAR,
                value,
                format!("{why}; use a count (4), indices (0,2,3), UUIDs (GPU-...,GPU-...) or none"),
            )
        };
        let text = value.trim();
        if text.eq_ignore_ascii_case("none") {
            return Ok(GpuOverride::None);
        }
        if text.is_empty() {
            return Err(bad("is empty"));
        }
        let items: Vec<&str> = text.split(',').map(str::trim).collect();
        if items.iter().any(|i| i.is_empty()) {
            return Err(bad("has an empty entry"));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = items.iter().find(|i| !seen.insert(**i)) {
            return Err(bad(&format!("lists {dup} twice")));
        }
        let is_uuid = |s: &str| s.starts_with("GPU-") || s.starts_with("MIG-");
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
            None => Err(bad("is neither a count, indices nor UUIDs")),
        }
    }

    /// The inventory this override stands for. It has no topology: all pairs are equal.
    pub fn inventory(&self) -> Inventory {
        let gpu = |index: u32, uuid: String, visible_id: String| Gpu {
            index,
            uuid,
            name: "unknown".into(),
            memory_total: 0,
            memory_free: 0,
            visible_id,
        };
        let gpus = match self {
            GpuOverride::None => Vec::new(),
            GpuOverride::Count(n) => (0..*n)
                .map(|i| gpu(i, String::new(), i.to_string()))
                .collect(),
            GpuOverride::Indices(list) => list
                .iter()
                .map(|&i| gpu(i, String::new(), i.to_string()))
                .collect(),
            GpuOverride::Uuids(list) => list
                .iter()
                .enumerate()
                .map(|(i, u)| gpu(i as u32, u.clone(), u.clone()))
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
    fn bad_values_name_the_variable() {
        for (value, why) in [
            ("two", "is neither a count"),
            ("0", "a count of 0"),
            ("1,1", "lists 1 twice"),
            ("", "is empty"),
            ("0,GPU-a", "is neither"),
        ] {
            let e = GpuOverride::parse(value).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("MODELMUX_GPUS={value:?}: {why}")),
                "{e}"
            );
        }
    }
}
