//! Fake model directories for tests and benchmarks: the real `config.json` shape and the
//! real tensor list of a known model, written as valid safetensors headers over sparse files,
//! so that a "135 GiB" checkpoint costs a few kilobytes of disk.

use std::path::Path;

use serde_json::json;

use super::safetensors::write_sparse;

/// A decoder-only transformer in the Llama family (Llama, Mistral, Qwen2 share the layout).
#[derive(Debug, Clone, Copy)]
pub struct Arch {
    /// `model_type` in config.json.
    pub model_type: &'static str,
    /// Vocabulary size.
    pub vocab: u64,
    /// Hidden size.
    pub hidden: u64,
    /// MLP intermediate size.
    pub intermediate: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Attention heads.
    pub heads: u64,
    /// KV heads (GQA).
    pub kv_heads: u64,
    /// `max_position_embeddings`.
    pub max_positions: u64,
    /// Whether q/k/v projections have biases (Qwen2).
    pub qkv_bias: bool,
    /// Whether the LM head shares the embedding (no `lm_head.weight`).
    pub tied: bool,
}

/// meta-llama/Meta-Llama-3-8B(-Instruct), config.json as published.
pub const LLAMA_3_8B: Arch = Arch {
    model_type: "llama",
    vocab: 128_256,
    hidden: 4096,
    intermediate: 14_336,
    layers: 32,
    heads: 32,
    kv_heads: 8,
    max_positions: 8192,
    qkv_bias: false,
    tied: false,
};

/// mistralai/Mistral-7B-Instruct-v0.3, config.json as published (quoted in
/// vllm-project/vllm#4989).
pub const MISTRAL_7B_V03: Arch = Arch {
    model_type: "mistral",
    vocab: 32_768,
    hidden: 4096,
    intermediate: 14_336,
    layers: 32,
    heads: 32,
    kv_heads: 8,
    max_positions: 32_768,
    qkv_bias: false,
    tied: false,
};

/// Qwen/Qwen2-72B-Instruct, config.json as published (the same shape as Qwen2.5-72B's, quoted
/// in vllm-project/vllm#8691).
pub const QWEN2_72B: Arch = Arch {
    model_type: "qwen2",
    vocab: 152_064,
    hidden: 8192,
    intermediate: 29_568,
    layers: 80,
    heads: 64,
    kv_heads: 8,
    max_positions: 32_768,
    qkv_bias: true,
    tied: false,
};

/// Qwen/Qwen2-0.5B-Instruct: a small model for tests that start engines.
pub const QWEN2_0_5B: Arch = Arch {
    model_type: "qwen2",
    vocab: 151_936,
    hidden: 896,
    intermediate: 4864,
    layers: 24,
    heads: 14,
    kv_heads: 2,
    max_positions: 32_768,
    qkv_bias: true,
    tied: true,
};

impl Arch {
    /// Every tensor of the checkpoint as (name, dtype, shape), in bf16.
    pub fn tensors(&self) -> Vec<(String, &'static str, Vec<u64>)> {
        let head = self.hidden / self.heads;
        let kv = self.kv_heads * head;
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            "BF16",
            vec![self.vocab, self.hidden],
        )];
        for i in 0..self.layers {
            let p = format!("model.layers.{i}");
            let mut add =
                |name: &str, shape: Vec<u64>| out.push((format!("{p}.{name}"), "BF16", shape));
            add("input_layernorm.weight", vec![self.hidden]);
            add("self_attn.q_proj.weight", vec![self.hidden, self.hidden]);
            add("self_attn.k_proj.weight", vec![kv, self.hidden]);
            add("self_attn.v_proj.weight", vec![kv, self.hidden]);
            if self.qkv_bias {
                add("self_attn.q_proj.bias", vec![self.hidden]);
                add("self_attn.k_proj.bias", vec![kv]);
                add("self_attn.v_proj.bias", vec![kv]);
            }
            add("self_attn.o_proj.weight", vec![self.hidden, self.hidden]);
            add("post_attention_layernorm.weight", vec![self.hidden]);
            add("mlp.gate_proj.weight", vec![self.intermediate, self.hidden]);
            add("mlp.up_proj.weight", vec![self.intermediate, self.hidden]);
            add("mlp.down_proj.weight", vec![self.hidden, self.intermediate]);
        }
        out.push(("model.norm.weight".into(), "BF16", vec![self.hidden]));
        if !self.tied {
            out.push((
                "lm_head.weight".into(),
                "BF16",
                vec![self.vocab, self.hidden],
            ));
        }
        out
    }

    /// The parameter count.
    pub fn params(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|(_, _, s)| s.iter().product::<u64>())
            .sum()
    }

    /// config.json with the keys vLLM reads.
    pub fn config_json(&self) -> serde_json::Value {
        let mut cfg = json!({
            "architectures": [match self.model_type {
                "llama" => "LlamaForCausalLM",
                "mistral" => "MistralForCausalLM",
                _ => "Qwen2ForCausalLM",
            }],
            "model_type": self.model_type,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": self.max_positions,
            "vocab_size": self.vocab,
            "rms_norm_eps": 1e-5,
            "sliding_window": null,
            "tie_word_embeddings": self.tied,
            "torch_dtype": "bfloat16",
        });
        if self.model_type == "qwen2" {
            // Qwen2 declares a window but turns it off.
            cfg["sliding_window"] = json!(self.max_positions);
            cfg["use_sliding_window"] = json!(false);
            cfg["max_window_layers"] = json!(self.layers);
        }
        cfg
    }

    /// Writes config.json, `shards` sparse safetensors shards and their index into `dir`.
    pub fn write(&self, dir: &Path, shards: usize) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("config.json"), self.config_json().to_string())?;
        let tensors = self.tensors();
        let shards = shards.clamp(1, tensors.len());
        let per = tensors.len().div_ceil(shards);
        let mut map = serde_json::Map::new();
        let mut total = 0u64;
        for (n, chunk) in tensors.chunks(per).enumerate() {
            let file = if shards == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", n + 1, shards)
            };
            total += write_sparse(&dir.join(&file), chunk)?;
            for (name, _, _) in chunk {
                map.insert(name.clone(), json!(file));
            }
        }
        if shards > 1 {
            let index = json!({"metadata": {"total_size": total}, "weight_map": map});
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string())?;
        }
        Ok(())
    }
}
