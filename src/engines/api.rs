//! Talking to a running engine: the API key its clients must send, and its `/v1/models`
//! entries completed with every served name for modelmux's own list.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Concept, Engine};

/// The API key the engine requires of its clients (modelmux's own probe of its
/// `/v1/models` included): its flag in the engine's command line, else the profile's
/// variable in the engine's environment or modelmux's. llama.cpp takes a comma list; the
/// first key is used.
pub fn api_key(engine: Engine, argv: &[String], env: &BTreeMap<String, String>) -> Option<String> {
    let p = engine.profile();
    let from_flag = p.flag(Concept::ApiKey).and_then(|flag| {
        let inline = format!("{flag}=");
        argv.iter().enumerate().rev().find_map(|(i, a)| {
            a.strip_prefix(&inline)
                .map(str::to_string)
                .or_else(|| (a == flag).then(|| argv.get(i + 1).cloned()).flatten())
        })
    });
    let from_env = || {
        let var = p.api_key_env?;
        env.get(var).cloned().or_else(|| std::env::var(var).ok())
    };
    from_flag
        .or_else(from_env)
        .map(|k| match engine {
            Engine::Llamacpp => k.split(',').next().unwrap_or("").trim().to_string(),
            _ => k,
        })
        .filter(|k| !k.is_empty())
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
