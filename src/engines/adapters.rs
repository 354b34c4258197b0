//! LoRA adapters: read from `params` and `fine_tune_weights`, checked against the
//! profile's adapter style, and written back as the profile's one adapter flag.

use super::{AdapterStyle, Profile, dashed, params_err};
use crate::config::{Adapter, Arg, ConfigError, EngineArgs};

/// The name in an adapter value: `NAME=PATH`, JSON (`name` or `lora_name`), or a bare path
/// (SGLang names it by its path).
fn adapter_value(value: &str) -> Option<Adapter> {
    let value = value.trim();
    if value.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(value).ok()?;
        let name = v.get("name").or_else(|| v.get("lora_name"))?.as_str()?;
        let path = v.get("path").or_else(|| v.get("lora_path"));
        return Some(Adapter {
            name: name.to_string(),
            path: path.and_then(|p| p.as_str()).unwrap_or("").to_string(),
        });
    }
    match value.split_once('=') {
        Some((name, path)) if !name.is_empty() => Some(Adapter {
            name: name.to_string(),
            path: path.to_string(),
        }),
        _ => None,
    }
}

/// Collects adapters from `params` and `fine_tune_weights` into the profile's one flag.
pub(super) fn place_adapters(
    p: &Profile,
    args: &mut EngineArgs,
    fine_tune: Vec<Adapter>,
    origin: &str,
) -> Result<Vec<Adapter>, ConfigError> {
    let mut adapters = Vec::new();
    let mut values = Vec::new();
    match p.adapters {
        AdapterStyle::Unnamed { flag } => {
            if let Some(a) = fine_tune.first() {
                return Err(params_err(
                    origin,
                    format!(
                        "{} applies {flag} adapters to every request and cannot serve adapter \
                         {:?} under its own name; remove fine_tune_weights and put {flag} PATH \
                         in params to merge it into the model",
                        p.name, a.name
                    ),
                ));
            }
            return Ok(adapters);
        }
        AdapterStyle::NamedValues { flag, .. } => {
            for arg in args.take(&dashed(flag)) {
                for value in arg.values {
                    let adapter = adapter_value(&value).or_else(|| {
                        // SGLang also takes a bare PATH, named by the path.
                        (p.name == "sglang").then(|| Adapter {
                            name: value.clone(),
                            path: value.clone(),
                        })
                    });
                    let adapter = adapter.ok_or_else(|| {
                        params_err(origin, format!("{flag} value {value:?} is not NAME=PATH"))
                    })?;
                    adapters.push(adapter);
                    values.push(value);
                }
            }
        }
        AdapterStyle::NamedComma { flag } => {
            for arg in args.take(&dashed(flag)) {
                for value in arg.values.iter().flat_map(|v| v.split(',')) {
                    let value = value.trim();
                    // TGI: `id[=path][@revision]`; the id is the name requests use.
                    let name = value.split(['=', '@']).next().unwrap_or("");
                    if name.is_empty() {
                        return Err(params_err(
                            origin,
                            format!("{flag} entry {value:?} is not NAME=PATH"),
                        ));
                    }
                    let path = value.split_once('=').map_or(name, |(_, p)| p);
                    adapters.push(Adapter {
                        name: name.to_string(),
                        path: path.to_string(),
                    });
                    values.push(value.to_string());
                }
            }
        }
    }
    for a in fine_tune {
        values.push(format!("{}={}", a.name, a.path));
        adapters.push(a);
    }
    if values.is_empty() {
        return Ok(adapters);
    }
    match p.adapters {
        AdapterStyle::NamedValues { flag, enable } => {
            if let Some(enable) = enable
                && !args.has(&dashed(enable))
            {
                args.args.push(Arg::new(enable, &[]));
            }
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            args.args.push(Arg::new(flag, &values));
        }
        AdapterStyle::NamedComma { flag } => {
            args.args.push(Arg::new(flag, &[&values.join(",")]));
        }
        AdapterStyle::Unnamed { .. } => {}
    }
    Ok(adapters)
}
