//! When a model's engine runs (SPEC §9): `load` (`always` or `on_demand`), and for on-demand
//! models `idle_unload` (seconds without requests before it is unloaded) and `unload` (how:
//! `stop` the engine, or put it to `sleep` through vLLM's sleep mode).

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::ConfigError;

/// Default of `idle_unload`, in seconds.
pub const DEFAULT_IDLE_UNLOAD: f64 = 600.0;

/// When the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadMode {
    /// Started with modelmux and kept running.
    #[default]
    Always,
    /// Started by its first request, unloaded after `idle_unload` seconds without one.
    OnDemand,
}

impl LoadMode {
    /// The spelling of the configuration and the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadMode::Always => "always",
            LoadMode::OnDemand => "on_demand",
        }
    }
}

/// How an idle on-demand model is unloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnloadMode {
    /// The engine stops; the next request starts it from scratch.
    #[default]
    Stop,
    /// vLLM's sleep mode, level 1: the weights move to CPU memory, the KV cache is dropped;
    /// the next request wakes it (seconds instead of minutes).
    Sleep,
}

impl UnloadMode {
    /// The spelling of the configuration and the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            UnloadMode::Stop => "stop",
            UnloadMode::Sleep => "sleep",
        }
    }
}

/// A model's `load`, `unload` and `idle_unload`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loading {
    /// `load`.
    pub load: LoadMode,
    /// `unload`.
    pub unload: UnloadMode,
    /// `idle_unload`.
    pub idle_unload: Duration,
}

impl Default for Loading {
    fn default() -> Self {
        Loading {
            load: LoadMode::Always,
            unload: UnloadMode::Stop,
            idle_unload: Duration::from_secs_f64(DEFAULT_IDLE_UNLOAD),
        }
    }
}

/// One of `choices` (as written in the configuration), or an error naming the field.
fn choice<T: Copy>(
    source: &str,
    obj: &Map<String, Value>,
    origin: &str,
    key: &str,
    choices: &[(&str, T)],
) -> Result<Option<T>, ConfigError> {
    let bad = || {
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
        ConfigError::field(
            source,
            format!("{origin}.{key}"),
            format!("must be {}", names.join(" or ")),
        )
    };
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => choices
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s.trim()))
            .map(|(_, v)| Some(*v))
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// Reads `load`, `unload` and `idle_unload` of one model entry; `warnings` gets a line for
/// settings that do nothing (unload settings of an always-loaded model).
pub fn read(
    source: &str,
    obj: &Map<String, Value>,
    origin: &str,
    warnings: &mut Vec<String>,
) -> Result<Loading, ConfigError> {
    let load = choice(
        source,
        obj,
        origin,
        "load",
        &[
            ("always", LoadMode::Always),
            ("on_demand", LoadMode::OnDemand),
        ],
    )?
    .unwrap_or_default();
    let unload = choice(
        source,
        obj,
        origin,
        "unload",
        &[("stop", UnloadMode::Stop), ("sleep", UnloadMode::Sleep)],
    )?;
    let idle = match obj.get("idle_unload") {
        None | Some(Value::Null) => None,
        // OCI's metadata carries every value as a string.
        Some(Value::Number(n)) => Some(n.as_f64()),
        Some(Value::String(s)) => Some(s.trim().parse::<f64>().ok()),
        Some(_) => Some(None),
    };
    let idle_unload = match idle {
        None => DEFAULT_IDLE_UNLOAD,
        Some(Some(secs)) if secs.is_finite() && secs > 0.0 && secs <= 1e9 => secs,
        Some(_) => {
            return Err(ConfigError::field(
                source,
                format!("{origin}.idle_unload"),
                "must be a number of seconds above 0, such as 600",
            ));
        }
    };
    if load == LoadMode::Always {
        let given: Vec<&str> = ["unload", "idle_unload"]
            .into_iter()
            .filter(|k| obj.get(*k).is_some_and(|v| !v.is_null()))
            .collect();
        if !given.is_empty() {
            warnings.push(format!(
                "{origin}: {} is ignored: the model is loaded always (set \"load\": \"on_demand\" to unload it when idle)",
                given.join(" and ")
            ));
        }
    }
    Ok(Loading {
        load,
        unload: unload.unwrap_or_default(),
        idle_unload: Duration::from_secs_f64(idle_unload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read_one(v: Value) -> (Result<Loading, ConfigError>, Vec<String>) {
        let mut w = Vec::new();
        let r = read(
            "MULTI_MODEL_CONFIG",
            v.as_object().unwrap(),
            "models[0]",
            &mut w,
        );
        (r, w)
    }

    #[test]
    fn defaults_and_spellings() {
        let (r, w) = read_one(json!({}));
        assert_eq!(r.unwrap(), Loading::default());
        assert!(w.is_empty());
        let (r, _) =
            read_one(json!({"load": "on_demand", "unload": "sleep", "idle_unload": "2.5"}));
        let l = r.unwrap();
        assert_eq!(l.load, LoadMode::OnDemand);
        assert_eq!(l.unload, UnloadMode::Sleep);
        assert_eq!(l.idle_unload, Duration::from_millis(2500));
        let (r, _) = read_one(json!({"load": "On_Demand", "idle_unload": 30}));
        assert_eq!(r.unwrap().idle_unload, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_name_the_field() {
        for (v, field, what) in [
            (
                json!({"load": "lazy"}),
                "models[0].load",
                "\"always\" or \"on_demand\"",
            ),
            (
                json!({"unload": 1}),
                "models[0].unload",
                "\"stop\" or \"sleep\"",
            ),
            (
                json!({"idle_unload": 0}),
                "models[0].idle_unload",
                "above 0",
            ),
            (
                json!({"idle_unload": "soon"}),
                "models[0].idle_unload",
                "above 0",
            ),
            (
                json!({"idle_unload": [1]}),
                "models[0].idle_unload",
                "above 0",
            ),
        ] {
            let e = read_one(v).0.unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(what), "{e}");
        }
    }

    #[test]
    fn unload_settings_of_an_always_model_are_said_to_do_nothing() {
        let (r, w) = read_one(json!({"unload": "sleep", "idle_unload": 5}));
        assert_eq!(r.unwrap().load, LoadMode::Always);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("unload and idle_unload is ignored"), "{w:?}");
    }
}
