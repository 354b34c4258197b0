//! Checks on a model entry beyond its shape: typos in keys and values get a warning that
//! names the nearest known one (SPEC §2), and strings no process can be given (a NUL byte,
//! an environment variable name with `=`) are refused before anything starts rather than
//! failing at spawn.

use serde_json::{Map, Value};

use super::{ConfigError, RawConfig};

/// Every `ModelSpec` key of SPEC §2.
pub const MODEL_KEYS: &[&str] = &[
    "model_path",
    "params",
    "model_id",
    "model_task",
    "fine_tune_weights",
    "env",
    "max_concurrency",
    "max_queue",
    "load",
    "engine",
    "engine_cmd",
    "idle_unload",
    "unload",
];

/// `model_task` values of OCI Data Science's multi-model deployments. Only
/// `text_embedding` changes what modelmux does (`/predict` goes to `/v1/embeddings`).
pub const MODEL_TASKS: &[&str] = &[
    "text_generation",
    "text_generation_inference",
    "text2text_generation",
    "summarization",
    "translation",
    "conversational",
    "feature_extraction",
    "sentence_similarity",
    "automatic_speech_recognition",
    "text_to_speech",
    "text_to_image",
    "text_embedding",
    "image_text_to_text",
    "code_synthesis",
    "question_answering",
    "audio_classification",
    "audio_to_audio",
    "image_classification",
    "image_to_text",
    "image_to_image",
    "video_classification",
    "time_series_forecasting",
];

/// Edit distance between two short strings (insertions, deletions, substitutions).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The known word closest to `word`, if any is close enough to be what was meant: one that
/// contains it or is contained in it (`embedding` → `text_embedding`), else one within a
/// third of its length in edits (`parms` → `params`). Case and `-` versus `_` are ignored.
pub fn nearest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let w = word.to_ascii_lowercase().replace('-', "_");
    if w.len() >= 3
        && let Some(k) = known
            .iter()
            .filter(|k| k.contains(w.as_str()) || w.contains(**k))
            .min_by_key(|k| k.len().abs_diff(w.len()))
    {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (distance(&w, k), *k))
        .filter(|(d, _)| *d <= (w.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn suggestion(word: &str, known: &[&str]) -> String {
    match nearest(word, known) {
        Some(k) => format!("; did you mean {k:?}?"),
        None => String::new(),
    }
}

/// Warnings for one model entry: unknown keys and an unknown `model_task`.
pub fn model_warnings(origin: &str, obj: &Map<String, Value>) -> Vec<String> {
    let mut warnings = Vec::new();
    for key in obj.keys().filter(|k| !MODEL_KEYS.contains(&k.as_str())) {
        let hint = match nearest(key, MODEL_KEYS) {
            Some(k) => format!("did you mean {k:?}?"),
            None => format!("known keys: {}", MODEL_KEYS.join(", ")),
        };
        warnings.push(format!("{origin}: unknown key {key:?} is ignored; {hint}"));
    }
    if let Some(Value::String(task)) = obj.get("model_task")
        && !MODEL_TASKS.contains(&task.as_str())
    {
        warnings.push(format!(
            "{origin}.model_task: unknown task {task:?}{} (only \"text_embedding\" changes \
             anything: /predict then goes to /v1/embeddings)",
            suggestion(task, MODEL_TASKS)
        ));
    }
    warnings
}

/// Refuses a NUL byte anywhere in a model entry (keys included): no command-line argument,
/// path or environment variable can hold one, so the engine could never start.
pub fn reject_nul(source: &str, path: &str, value: &Value) -> Result<(), ConfigError> {
    let refuse = |at: String| {
        Err(ConfigError::field(
            source,
            at,
            "contains a NUL byte (\\u0000), which no command line, path or environment \
             variable can hold; remove it",
        ))
    };
    match value {
        Value::String(s) if s.contains('\0') => refuse(path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| reject_nul(source, &format!("{path}[{i}]"), v)),
        Value::Object(fields) => fields.iter().try_for_each(|(k, v)| {
            if k.contains('\0') {
                return refuse(format!("{path}.{}", k.replace('\0', "\\u0000")));
            }
            reject_nul(source, &format!("{path}.{k}"), v)
        }),
        _ => Ok(()),
    }
}

/// An `env` key must be usable as an environment variable name.
pub fn env_name(source: &str, origin: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains('=') {
        return Err(ConfigError::field(
            source,
            format!("{origin}.env.{name}"),
            "is not a valid environment variable name (empty or with '=')",
        ));
    }
    Ok(())
}

/// A note when the input that supplies the models hides others that are also set (the
/// precedence is `--config`, `MULTI_MODEL_CONFIG`, `OCI_MODEL_GROUP_CUSTOM_METADATA`,
/// `MODEL`). `MULTI_MODEL_CONFIG` beside OCI's metadata is normal on OCI and not noted.
pub fn shadowed_sources(raw: &RawConfig) -> Option<String> {
    let single = raw.model.is_some().then_some("MODEL");
    let (winner, hidden): (&str, Vec<&str>) = if raw.config_file.is_some() {
        let mut hidden = Vec::new();
        if raw.multi_model_config.is_some() {
            hidden.push("MULTI_MODEL_CONFIG");
        }
        if raw.oci_metadata.is_some() {
            hidden.push("OCI_MODEL_GROUP_CUSTOM_METADATA");
        }
        hidden.extend(single);
        ("--config", hidden)
    } else if raw.multi_model_config.is_some() {
        ("MULTI_MODEL_CONFIG", single.into_iter().collect())
    } else {
        return None;
    };
    (!hidden.is_empty()).then(|| {
        format!(
            "the models come from {winner}; {} {} also set and ignored",
            hidden.join(" and "),
            if hidden.len() == 1 { "is" } else { "are" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nearest_finds_what_was_meant() {
        assert_eq!(nearest("parms", MODEL_KEYS), Some("params"));
        assert_eq!(nearest("model-path", MODEL_KEYS), Some("model_path"));
        assert_eq!(nearest("Model_Task", MODEL_KEYS), Some("model_task"));
        assert_eq!(
            nearest("fine_tune_weight", MODEL_KEYS),
            Some("fine_tune_weights")
        );
        assert_eq!(nearest("environment", MODEL_KEYS), Some("env"));
        assert_eq!(nearest("zzz", MODEL_KEYS), None);
        assert_eq!(nearest("embedding", MODEL_TASKS), Some("text_embedding"));
        assert_eq!(
            nearest("text_generaton", MODEL_TASKS),
            Some("text_generation")
        );
        assert_eq!(nearest("chat", MODEL_TASKS), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn unknown_keys_and_tasks_are_warned_about_with_the_nearest_known() {
        let obj = json!({"model_path": "m", "parms": "--x", "model_task": "embedding", "zzz": 1});
        let w = model_warnings("models[1]", obj.as_object().unwrap());
        assert_eq!(
            w,
            [
                "models[1]: unknown key \"parms\" is ignored; did you mean \"params\"?".to_string(),
                format!(
                    "models[1]: unknown key \"zzz\" is ignored; known keys: {}",
                    MODEL_KEYS.join(", ")
                ),
                "models[1].model_task: unknown task \"embedding\"; did you mean \
                 \"text_embedding\"? (only \"text_embedding\" changes anything: /predict then \
                 goes to /v1/embeddings)"
                    .to_string(),
            ]
        );
        let known = json!({"model_path": "m", "model_task": "text_generation", "engine": "vllm"});
        assert!(model_warnings("models[0]", known.as_object().unwrap()).is_empty());
    }

    #[test]
    fn nul_bytes_are_refused_where_they_are() {
        let ok = json!({"params": "--x 1", "env": {"A": "b"}});
        assert!(reject_nul("S", "models[0]", &ok).is_ok());
        let e = reject_nul("S", "models[0]", &json!({"params": "--x \u{0}1"})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("S: models[0].params: contains a NUL byte"),
            "{e}"
        );
        let e = reject_nul("S", "models[2]", &json!({"env": {"A\u{0}B": "x"}})).unwrap_err();
        assert!(
            e.to_string().starts_with("S: models[2].env.A\\u0000B:"),
            "{e}"
        );
        let e = reject_nul(
            "S",
            "models[0]",
            &json!({"fine_tune_weights": [{"model_path": "a\u{0}"}]}),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("S: models[0].fine_tune_weights[0].model_path:"),
            "{e}"
        );
    }

    #[test]
    fn shadowed_sources_are_named() {
        let mut raw = RawConfig {
            config_file: Some("f.json".into()),
            multi_model_config: Some("{}".into()),
            ..Default::default()
        };
        assert_eq!(
            shadowed_sources(&raw).unwrap(),
            "the models come from --config; MULTI_MODEL_CONFIG is also set and ignored"
        );
        raw.model = Some("m".into());
        assert_eq!(
            shadowed_sources(&raw).unwrap(),
            "the models come from --config; MULTI_MODEL_CONFIG and MODEL are also set and ignored"
        );
        raw.config_file = None;
        raw.oci_metadata = Some("[]".into());
        assert_eq!(
            shadowed_sources(&raw).unwrap(),
            "the models come from MULTI_MODEL_CONFIG; MODEL is also set and ignored"
        );
        raw.model = None;
        assert_eq!(shadowed_sources(&raw), None);
    }
}
