//! Talking to a running engine: the API key its clients must send, and its `/v1/models`
//! entries completed with every served name for modelmux's own list.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Concept, Engine};

/// The API key the engine requires of its clients (modelmux's own probe of its
/// `/v1/models` included): its flag in the engine's command line, else the profile's
/// variable in the engine's environment or modelmux's. llama.cpp takes a comma list (the
/// first key is used) and also keys from a file (`--api-key-file`).
pub fn api_key(engine: Engine, argv: &[String], env: &BTreeMap<String, String>) -> Option<String> {
    let p = engine.profile();
    let var = |name: &str| env.get(name).cloned().or_else(|| std::env::var(name).ok());
    let from_flag = p
        .flag(Concept::ApiKey)
        .and_then(|flag| flag_value(argv, flag));
    let from_env = || var(p.api_key_env?);
    let key = from_flag
        .or_else(from_env)
        .map(|k| match engine {
            Engine::Llamacpp => k.split(',').next().unwrap_or("").trim().to_string(),
            _ => k,
        })
        .filter(|k| !k.is_empty());
    match engine {
        Engine::Llamacpp => key.or_else(|| {
            let file =
                flag_value(argv, "--api-key-file").or_else(|| var("LLAMA_ARG_API_KEY_FILE"))?;
            first_key_in_file(&file)
        }),
        _ => key,
    }
}

/// The last value given to `flag` (`--flag V` or `--flag=V`).
fn flag_value(argv: &[String], flag: &str) -> Option<String> {
    let inline = format!("{flag}=");
    argv.iter().enumerate().rev().find_map(|(i, a)| {
        a.strip_prefix(&inline)
            .map(str::to_string)
            .or_else(|| (a == flag).then(|| argv.get(i + 1).cloned()).flatten())
    })
}

/// The first key of a llama.cpp key file: its first line that is neither empty nor starts
/// with `#` (llama.cpp's `common/arg.cpp`). `None` when it cannot be read: the engine then
/// fails to start with its own message.
fn first_key_in_file(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
}

/// The engine's own `/v1/models` entries completed for modelmux's list: every served name
/// the engine does not list itself (SGLang and llama.cpp list only the first, TGI only its
/// model id: [`ModelsList`](super::ModelsList)) gets a copy of the engine's base-model
/// entry with its `id` set to the name, so that the engine's fields (`max_model_len`,
/// `owned_by`, `meta`, ...) reach the front's list for every name. Adapters the engine does
/// not list are left to the front's own entries.
pub fn model_entries(
    served_names: &[String],
    model_path: &str,
    adapters: &[String],
    mut list: Vec<Value>,
) -> Vec<Value> {
    let id_is = |e: &Value, id: &str| e.get("id").and_then(Value::as_str) == Some(id);
    let base = served_names
        .iter()
        .find_map(|n| list.iter().find(|e| id_is(e, n)))
        .or_else(|| list.iter().find(|e| id_is(e, model_path)))
        .or_else(|| {
            list.iter()
                .find(|e| !adapters.iter().any(|a| id_is(e, a)) && e.is_object())
        })
        .filter(|e| e.is_object())
        .cloned();
    let Some(base) = base else {
        return list;
    };
    for name in served_names {
        if !list.iter().any(|e| id_is(e, name)) {
            let mut entry = base.clone();
            entry["id"] = Value::String(name.clone());
            list.push(entry);
        }
    }
    list
}
