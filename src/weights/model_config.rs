//! What `config.json` says about the KV cache: layers, KV heads, head size, dtype, sliding
//! windows, MLA, and the longest sequence the model takes. Key names and defaults follow
//! Hugging Face's configs as vLLM reads them (vllm/config/model.py: `get_num_kv_heads`,
//! `get_head_size`, `_get_and_verify_max_len`).

use std::path::Path;

use serde_json::{Map, Value};

use super::WeightsError;

/// Keys vLLM reads the model's longest sequence from, taking the smallest present
/// (`possible_keys` in `_get_and_verify_max_len`, vllm/config/model.py).
const MAX_LEN_KEYS: &[&str] = &[
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
];

/// Encoder-only architectures: vLLM gives their layers `EncoderOnlyAttentionSpec`, whose
/// `max_memory_usage_bytes` is 0 (vllm/v1/kv_cache_interface.py): no KV cache.
const ENCODER_ONLY: &[&str] = &[
    "bert",
    "roberta",
    "xlm-roberta",
    "deberta-v2",
    "distilbert",
    "electra",
    "modernbert",
    "nomic_bert",
];

/// The KV-cache shape of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// `model_type`, for messages.
    pub model_type: String,
    /// Decoder layers with attention.
    pub layers: u64,
    /// KV heads (GQA); with MLA, 1.
    pub kv_heads: u64,
    /// Elements one KV head stores per token: `2 × head_size` (K and V) for ordinary
    /// attention, `kv_lora_rank + qk_rope_head_dim` (one latent, no separate V) with MLA
    /// (`MLAAttentionSpec.real_page_size_bytes`).
    pub kv_width: u64,
    /// The model's longest sequence (rope scaling applied).
    pub max_len: u64,
    /// `torch_dtype` (or `dtype`) as written, e.g. `bfloat16`.
    pub dtype: Option<String>,
    /// Per layer: `Some(window)` for sliding-window attention, `None` for full attention.
    pub windows: Vec<Option<u64>>,
    /// True with multi-head latent attention (DeepSeek V2/V3).
    pub mla: bool,
    /// True for encoder-only models: no KV cache.
    pub encoder_only: bool,
}

/// Reads `dir/config.json`.
pub fn read(dir: &Path) -> Result<Shape, WeightsError> {
    let path = dir.join("config.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(WeightsError::new(
                &path,
                "missing; vLLM needs the model's config.json next to its weights".to_string(),
            ));
        }
        Err(e) => return Err(WeightsError::new(&path, format!("cannot read it: {e}"))),
    };
    let root: Map<String, Value> = serde_json::from_slice(&text)
        .map_err(|e| WeightsError::new(&path, format!("not valid JSON ({e})")))?;
    shape(&root).map_err(|why| WeightsError::new(&path, why))
}

fn uint(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e15)
                .map(|f| f as u64)
        }) {
            Some(n) => Ok(Some(n)),
            None => Err(format!("{key} is {v}, not a whole number")),
        },
    }
}

fn first(obj: &Map<String, Value>, keys: &[&str]) -> Result<Option<u64>, String> {
    for k in keys {
        if let Some(v) = uint(obj, k)? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Reads the shape from a parsed config. Multimodal configs keep the language model's keys
/// under `text_config` (or `llm_config`); the top level supplies what those lack.
pub fn shape(root: &Map<String, Value>) -> Result<Shape, String> {
    let nested = ["text_config", "llm_config", "language_config"]
        .iter()
        .find_map(|k| root.get(*k).and_then(Value::as_object));
    let cfg: &Map<String, Value> = match nested {
        Some(n) if !root.contains_key("num_hidden_layers") => n,
        _ => root,
    };
    let text = |k: &str| {
        cfg.get(k)
            .or_else(|| root.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let model_type = text("model_type").unwrap_or_else(|| "unknown".into());
    let layers = first(
        cfg,
        &["num_hidden_layers", "n_layer", "num_layers", "n_layers"],
    )?
    .ok_or("has no num_hidden_layers (nor n_layer, num_layers); cannot size the KV cache")?;
    let heads = first(cfg, &["num_attention_heads", "n_head", "num_heads"])?
        .ok_or("has no num_attention_heads (nor n_head); cannot size the KV cache")?;
    if layers == 0 || heads == 0 || layers > 100_000 || heads > 100_000 {
        return Err(format!(
            "has {layers} layers and {heads} attention heads; expected 1 to 100000 of each"
        ));
    }
    let hidden = first(cfg, &["hidden_size", "n_embd", "d_model"])?;
    let head_dim = match uint(cfg, "head_dim")? {
        Some(h) => h,
        None => hidden.ok_or("has neither head_dim nor hidden_size")? / heads,
    };
    // GQA: num_key_value_heads; Falcon's multi-query flag means one KV head.
    let kv_heads = match first(cfg, &["num_key_value_heads", "n_head_kv", "num_kv_heads"])? {
        Some(k) => k,
        None if cfg.get("multi_query").and_then(Value::as_bool) == Some(true) => 1,
        None => heads,
    };
    let kv_lora = uint(cfg, "kv_lora_rank")?;
    let (kv_heads, kv_width, mla) = match kv_lora {
        Some(rank) => (1, rank + uint(cfg, "qk_rope_head_dim")?.unwrap_or(0), true),
        None => (kv_heads, 2 * head_dim, false),
    };
    if kv_width == 0 || kv_heads == 0 || kv_width > 1_000_000 || kv_heads > 100_000 {
        return Err(format!(
            "gives {kv_heads} KV heads of width {kv_width}; cannot size the KV cache"
        ));
    }
    let mut max_len = None::<u64>;
    for k in MAX_LEN_KEYS {
        if let Some(v) = uint(cfg, k)? {
            max_len = Some(max_len.map_or(v, |m| m.min(v)));
        }
    }
    let max_len = scaled(cfg, max_len.unwrap_or(2048))?;
    let windows = windows(cfg, layers)?;
    let dtype = text("torch_dtype").or_else(|| text("dtype"));
    Ok(Shape {
        encoder_only: ENCODER_ONLY.contains(&model_type.as_str()),
        model_type,
        layers,
        kv_heads,
        kv_width,
        max_len,
        dtype,
        windows,
        mla,
    })
}

/// Rope scaling stretches the longest sequence by its factor, except for the types that
/// already state the stretched length (vllm/config/model.py, `_get_and_verify_max_len`:
/// `su`, `longrope`, `llama3`, and mrope); YaRN scales its original length. vLLM falls back
/// to 2048 when no key is present.
fn scaled(cfg: &Map<String, Value>, base: u64) -> Result<u64, String> {
    let Some(rope) = cfg
        .get("rope_scaling")
        .or_else(|| cfg.get("rope_parameters"))
        .and_then(Value::as_object)
    else {
        return Ok(base);
    };
    let kind = rope
        .get("rope_type")
        .or_else(|| rope.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(factor) = rope.get("factor").and_then(Value::as_f64) else {
        return Ok(base);
    };
    if ["su", "longrope", "llama3", "default", "mrope"].contains(&kind)
        || rope.contains_key("mrope_section")
    {
        return Ok(base);
    }
    let start = if kind == "yarn" {
        uint(rope, "original_max_position_embeddings")?.unwrap_or(base)
    } else {
        base
    };
    let len = start as f64 * factor;
    if !(len.is_finite() && (1.0..1e12).contains(&len)) {
        return Err(format!(
            "has a rope_scaling factor {factor} that gives no usable length"
        ));
    }
    Ok(len as u64)
}

/// Which layers use sliding-window attention: `layer_types` when the config lists them, else
/// a `sliding_window` that applies to every layer unless `use_sliding_window` is false.
/// Mixed models without `layer_types` count as full attention everywhere (an upper bound).
fn windows(cfg: &Map<String, Value>, layers: u64) -> Result<Vec<Option<u64>>, String> {
    let window = uint(cfg, "sliding_window")?;
    if let Some(types) = cfg.get("layer_types").and_then(Value::as_array) {
        return Ok((0..layers as usize)
            .map(|i| match types.get(i).and_then(Value::as_str) {
                Some(t) if t.contains("sliding") => window,
                _ => None,
            })
            .collect());
    }
    let enabled = cfg.get("use_sliding_window").and_then(Value::as_bool) != Some(false);
    let pattern =
        cfg.contains_key("sliding_window_pattern") || cfg.contains_key("max_window_layers");
    match window {
        Some(w) if enabled && !pattern => Ok(vec![Some(w); layers as usize]),
        _ => Ok(vec![None; layers as usize]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Shape, String> {
        shape(
            serde_json::from_str::<Value>(json)
                .unwrap()
                .as_object()
                .unwrap(),
        )
    }

    #[test]
    fn gqa_head_dim_and_lengths() {
        let s = parse(
            r#"{"model_type":"llama","num_hidden_layers":32,"num_attention_heads":32,
                "num_key_value_heads":8,"hidden_size":4096,"max_position_embeddings":8192,
                "torch_dtype":"bfloat16"}"#,
        )
        .unwrap();
        assert_eq!(
            (s.layers, s.kv_heads, s.kv_width, s.max_len),
            (32, 8, 256, 8192)
        );
        assert_eq!(s.dtype.as_deref(), Some("bfloat16"));
        assert!(s.windows.iter().all(Option::is_none));
    }

    #[test]
    fn yarn_scaling_mla_and_nesting() {
        let s = parse(
            r#"{"model_type":"deepseek_v3","num_hidden_layers":61,"num_attention_heads":128,
                "num_key_value_heads":128,"hidden_size":7168,"kv_lora_rank":512,
                "qk_rope_head_dim":64,"max_position_embeddings":163840,
                "rope_scaling":{"type":"yarn","factor":40,"original_max_position_embeddings":4096}}"#,
        )
        .unwrap();
        assert!(s.mla);
        assert_eq!((s.kv_heads, s.kv_width, s.max_len), (1, 576, 163840));
        let v = parse(
            r#"{"model_type":"llava","text_config":{"num_hidden_layers":2,"num_attention_heads":4,
                "hidden_size":256,"max_position_embeddings":4096},"torch_dtype":"float16"}"#,
        )
        .unwrap();
        assert_eq!((v.layers, v.kv_width, v.max_len), (2, 128, 4096));
        assert_eq!(v.dtype.as_deref(), Some("float16"));
    }

    #[test]
    fn sliding_windows() {
        let mistral01 = parse(
            r#"{"num_hidden_layers":2,"num_attention_heads":4,"hidden_size":256,
                "max_position_embeddings":32768,"sliding_window":4096}"#,
        )
        .unwrap();
        assert_eq!(mistral01.windows, vec![Some(4096); 2]);
        let qwen = parse(
            r#"{"num_hidden_layers":2,"num_attention_heads":4,"hidden_size":256,
                "sliding_window":32768,"use_sliding_window":false,"max_window_layers":70}"#,
        )
        .unwrap();
        assert_eq!(qwen.windows, vec![None; 2]);
        let mixed = parse(
            r#"{"num_hidden_layers":3,"num_attention_heads":4,"hidden_size":256,
                "sliding_window":512,"layer_types":["sliding_attention","full_attention","sliding_attention"]}"#,
        )
        .unwrap();
        assert_eq!(mixed.windows, vec![Some(512), None, Some(512)]);
    }

    #[test]
    fn missing_or_bad_keys_say_which() {
        assert!(
            parse(r#"{"num_attention_heads":4}"#)
                .unwrap_err()
                .contains("num_hidden_layers")
        );
        assert!(
            parse(r#"{"num_hidden_layers":"x","num_attention_heads":4}"#)
                .unwrap_err()
                .contains("num_hidden_layers is \"x\", not a whole number")
        );
        assert!(
            parse(r#"{"num_hidden_layers":0,"num_attention_heads":4,"hidden_size":8}"#)
                .unwrap_err()
                .contains("0 layers")
        );
    }
}
