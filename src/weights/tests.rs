//! Estimates of fake model directories (real config.json shapes, real tensor lists, sparse
//! files) against the figures vLLM reports for the same models.

use std::path::Path;

use super::fixtures::{LLAMA_3_8B, MISTRAL_7B_V03, QWEN2_72B};
use super::*;

const GIB: u64 = 1 << 30;
const GIB_F: f64 = GIB as f64;

fn args(params: &str) -> MemoryArgs {
    let a = crate::config::EngineArgs::parse(params, "p").unwrap();
    MemoryArgs::from_args(crate::engines::Engine::Vllm, &a, "p", 1).unwrap()
}

fn est(dir: &Path, params: &str) -> MemoryEstimate {
    estimate(dir, &[], &args(params)).unwrap().expect("on disk")
}

fn err(dir: &Path) -> String {
    let e = estimate(dir, &[], &args("")).unwrap_err().to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn llama_3_8b_matches_what_vllm_reports() {
    let tmp = tempfile::tempdir().unwrap();
    LLAMA_3_8B.write(tmp.path(), 4).unwrap();
    let e = est(tmp.path(), "");
    // 8,030,261,248 parameters (the model card's 8.03B) in bf16.
    assert_eq!(LLAMA_3_8B.params(), 8_030_261_248);
    assert_eq!(e.weights_bytes, 16_060_522_496);
    // vLLM: "model weights take 14.96GiB" for meta-llama/Meta-Llama-3-8B
    // (vllm-project/vllm#10511, memory profiling sanity checks).
    assert!(
        (e.weights_bytes as f64 / GIB_F - 14.96).abs() < 0.01,
        "{}",
        e.describe()
    );
    // One 8192-token sequence: 32 layers × 8 KV heads × 128 × (K+V) × 2 bytes × 8192 = 1 GiB;
    // vLLM's FullAttentionSpec gives the same (8192 is a whole number of 16-token blocks).
    assert_eq!(e.max_model_len, 8192);
    assert_eq!(e.kv_cache_bytes, GIB);
    // vLLM's non-KV memory for this model in #10511: weights 14.96 + non-torch 1.79 +
    // activation peak 1.26 = 18.01 GiB (that version counted the CUDA context as non-torch;
    // CUDA graphs came on top). Ours: weights + overhead.
    let non_kv = (e.weights_bytes + e.overhead_bytes) as f64 / GIB_F;
    assert!(
        (non_kv - 18.01).abs() < 0.75,
        "non-KV {non_kv:.2} GiB vs vLLM's 18.01"
    );
    assert_eq!(e.gpus, 1);
    assert_eq!(e.per_gpu_bytes, e.total_bytes);
    assert_eq!(e.need.inside + e.need.outside, e.total_bytes);
    // Llama 3.1's 131072-token context: vLLM refuses a GPU without "(16.00 GiB KV cache is
    // needed" for one sequence (kv_cache_utils.py, check_enough_kv_cache_memory).
    let long = est(tmp.path(), "--max-model-len 128K");
    assert_eq!(long.kv_cache_bytes, 16 * GIB);
    // fp8 KV cache halves it; float32 weights double them.
    assert_eq!(
        est(tmp.path(), "--kv-cache-dtype fp8").kv_cache_bytes,
        GIB / 2
    );
    assert_eq!(
        est(tmp.path(), "--dtype float32").weights_bytes,
        2 * 16_060_522_496
    );
    // Online fp8 quantization: linear layers in one byte, embeddings and LM head in two.
    // 6,979,321,856 linear parameters × 1 + (1,050,673,152 embedding and head + 266,240
    // norm parameters) × 2.
    assert_eq!(est(tmp.path(), "-q fp8").weights_bytes, 9_081_200_640);
    // --enforce-eager drops the CUDA graphs from the overhead.
    assert_eq!(
        est(tmp.path(), "--enforce-eager").overhead_bytes,
        e.overhead_bytes - CUDA_GRAPHS
    );
}

#[test]
fn mistral_7b_counts_every_shard_once() {
    let tmp = tempfile::tempdir().unwrap();
    MISTRAL_7B_V03.write(tmp.path(), 3).unwrap();
    // The repository also ships consolidated.safetensors, the same weights in one file; the
    // index names only the shards and vLLM loads only those.
    safetensors::write_sparse(
        &tmp.path().join("consolidated.safetensors"),
        &MISTRAL_7B_V03.tensors(),
    )
    .unwrap();
    let e = est(tmp.path(), "");
    assert_eq!(e.weights_bytes, 2 * 7_248_023_552);
    // vLLM: "Loading model weights took 13.5083 GB" for Mistral-7B-Instruct-v0.3
    // (vllm-project/vllm#7514); 13.5005 GiB here, 0.06% apart.
    let reported = 13.5083;
    let ours = e.weights_bytes as f64 / GIB_F;
    assert!((ours - reported).abs() / reported < 0.002, "{ours:.4} GiB");
    // 32768 tokens × 128 KiB per token = 4 GiB.
    assert_eq!(e.kv_cache_bytes, 4 * GIB);
    // Without the index both copies would count: vLLM's duplicate filter needs it, so do we.
    std::fs::remove_file(tmp.path().join("model.safetensors.index.json")).unwrap();
    assert_eq!(est(tmp.path(), "").weights_bytes, 4 * 7_248_023_552);
}

#[test]
fn qwen2_72b_over_four_gpus() {
    let tmp = tempfile::tempdir().unwrap();
    QWEN2_72B.write(tmp.path(), 37).unwrap();
    let e = est(tmp.path(), "-tp 4 --max-model-len 32768");
    // 72,706,203,648 parameters: the model card's "72.7B".
    assert_eq!(e.weights_bytes, 2 * 72_706_203_648);
    assert_eq!(e.gpus, 4);
    // Per GPU, vLLM shards the weights four ways: 33.86 GiB each (135.43 GiB in all).
    let per_gpu_weights = e.weights_bytes.div_ceil(4) as f64 / GIB_F;
    assert!((per_gpu_weights - 33.86).abs() < 0.01, "{per_gpu_weights}");
    // KV: 80 layers × (8 KV heads / 4 ranks) × 256 × 2 bytes × 32768 tokens = 2.5 GiB a GPU.
    assert_eq!(e.kv_cache_bytes, 10 * GIB);
    assert_eq!(
        e.need.inside,
        e.weights_bytes.div_ceil(4) + 5 * GIB / 2 + ACTIVATION_PEAK + NON_TORCH + COLLECTIVES
    );
    // More ranks than KV heads: each rank keeps a whole KV head (get_num_kv_heads).
    let wide = est(tmp.path(), "-tp 16 --max-model-len 32768");
    assert_eq!(wide.kv_cache_bytes / 16, 80 * 256 * 2 * 32768);
    // Pipeline stages split the layers.
    let pp = est(tmp.path(), "-pp 2 --max-model-len 32768");
    assert_eq!(pp.kv_cache_bytes / 2, 40 * 8 * 256 * 2 * 32768);
}

#[test]
fn sliding_windows_mla_and_encoders() {
    let tmp = tempfile::tempdir().unwrap();
    MISTRAL_7B_V03.write(tmp.path(), 1).unwrap();
    // Mistral-7B-v0.1: every layer has a 4096-token window.
    let mut cfg = MISTRAL_7B_V03.config_json();
    cfg["sliding_window"] = serde_json::json!(4096);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let e = est(tmp.path(), "");
    // min(4096 - 1 + 8192, 32768) tokens → 768 blocks + 1 spare, × 16 tokens × 128 KiB.
    assert_eq!(e.kv_cache_bytes, 769 * 16 * 128 * 1024);
    // A BERT-like encoder keeps no KV cache.
    cfg["model_type"] = serde_json::json!("xlm-roberta");
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    assert_eq!(est(tmp.path(), "").kv_cache_bytes, 0);
    // DeepSeek-style MLA: one latent of kv_lora_rank + qk_rope_head_dim per token and layer.
    cfg["model_type"] = serde_json::json!("deepseek_v2");
    cfg["kv_lora_rank"] = serde_json::json!(512);
    cfg["qk_rope_head_dim"] = serde_json::json!(64);
    cfg["sliding_window"] = serde_json::Value::Null;
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    assert_eq!(
        est(tmp.path(), "--max-model-len 1024").kv_cache_bytes,
        32 * 576 * 2 * 1024
    );
}

#[test]
fn other_weight_formats_count_their_file_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("config.json"),
        LLAMA_3_8B.config_json().to_string(),
    )
    .unwrap();
    let bin = std::fs::File::create(dir.join("pytorch_model.bin")).unwrap();
    bin.set_len(5 * GIB).unwrap();
    std::fs::File::create(dir.join("training_args.bin"))
        .unwrap()
        .set_len(GIB)
        .unwrap();
    assert_eq!(est(dir, "").weights_bytes, 5 * GIB);
    // A float32 checkpoint is loaded in 16 bits.
    let mut cfg = LLAMA_3_8B.config_json();
    cfg["torch_dtype"] = serde_json::json!("float32");
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    assert_eq!(est(dir, "").weights_bytes, 5 * GIB / 2);

    // A GGUF file alone: its size, and the KV shape from its metadata.
    let gguf = tmp.path().join("model-Q4_K_M.gguf");
    super::gguf::write_minimal(
        &gguf,
        "llama",
        &[
            ("block_count", 32),
            ("attention.head_count", 32),
            ("attention.head_count_kv", 8),
            ("embedding_length", 4096),
            ("context_length", 8192),
        ],
        4_920_000_000,
    )
    .unwrap();
    let e = est(&gguf, "");
    assert_eq!(e.weights_bytes, 4_920_000_000);
    assert_eq!(e.kv_cache_bytes, GIB);
}

#[test]
fn adapters_add_their_weights() {
    let tmp = tempfile::tempdir().unwrap();
    LLAMA_3_8B.write(&tmp.path().join("base"), 2).unwrap();
    let lora = tmp.path().join("lora");
    std::fs::create_dir(&lora).unwrap();
    safetensors::write_sparse(
        &lora.join("adapter_model.safetensors"),
        &[
            ("a.lora_A.weight".into(), "F32", vec![16, 4096]),
            ("a.lora_B.weight".into(), "F32", vec![4096, 16]),
        ],
    )
    .unwrap();
    let missing = tmp.path().join("not-here");
    let e = estimate(&tmp.path().join("base"), &[&lora, &missing], &args(""))
        .unwrap()
        .unwrap();
    assert_eq!(e.weights_bytes, 16_060_522_496 + 2 * 16 * 4096 * 2);
}

#[test]
fn a_hugging_face_id_has_no_estimate() {
    assert_eq!(
        estimate(Path::new("meta-llama/Llama-3.1-8B"), &[], &args("")),
        Ok(None)
    );
}

#[test]
fn bad_files_are_one_line_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    LLAMA_3_8B.write(dir, 1).unwrap();
    let config = dir.join("config.json");
    let weights = dir.join("model.safetensors");

    std::fs::remove_file(&config).unwrap();
    assert_eq!(
        err(dir),
        format!(
            "{}: missing; vLLM needs the model's config.json next to its weights",
            config.display()
        )
    );
    std::fs::create_dir(&config).unwrap();
    assert!(err(dir).starts_with(&format!("{}: cannot read it: ", config.display())));
    std::fs::remove_dir(&config).unwrap();
    std::fs::write(&config, "{\"num_hidden_layers\": 32,").unwrap();
    assert!(err(dir).starts_with(&format!("{}: not valid JSON", config.display())));
    std::fs::write(&config, LLAMA_3_8B.config_json().to_string()).unwrap();

    // A header cut short: the length says 4096 bytes, the file has 100.
    let mut bytes = 4096u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[b' '; 92]);
    std::fs::write(&weights, &bytes).unwrap();
    assert_eq!(
        err(dir),
        format!(
            "{}: truncated: the header claims 4096 bytes but the file has 100",
            weights.display()
        )
    );
    std::fs::write(&weights, [1, 2, 3]).unwrap();
    assert!(err(dir).contains("truncated: 3 bytes is too short"));
    std::fs::write(&weights, u64::MAX.to_le_bytes()).unwrap();
    assert!(err(dir).contains("over safetensors' limit of 100 MB"));

    // A valid header over a small file that claims petabytes of tensors.
    let header = br#"{"w":{"dtype":"BF16","shape":[1000000000,1000000],"data_offsets":[0,2000000000000000]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(&weights, &bytes).unwrap();
    assert_eq!(
        err(dir),
        format!(
            "{}: the header declares 1.8 PiB of tensors but the file holds 0.0 B of data; the \
             file is truncated or corrupt",
            weights.display()
        )
    );
    let header = br#"{"w":{"dtype":"BF16","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,2]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(&weights, &bytes).unwrap();
    assert!(err(dir).contains("claims more elements than any file can hold"));
    std::fs::write(&weights, b"\x04\0\0\0\0\0\0\0{{{{").unwrap();
    assert!(err(dir).contains("the header is not a valid safetensors header"));

    // An index that names a shard that is not there.
    std::fs::remove_file(&weights).unwrap();
    LLAMA_3_8B.write(dir, 3).unwrap();
    std::fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    assert!(err(dir).contains("lists shard model-00002-of-00003.safetensors which is missing"));

    // No weights at all.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(err(&empty).contains("has no weight files"));
    // Not a GGUF file.
    let fake = empty.join("x.gguf");
    std::fs::write(&fake, b"GGML....").unwrap();
    assert!(err(&fake).starts_with(&format!("{}: not a GGUF file", fake.display())));
}

#[test]
fn a_header_of_the_wrong_shape_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    LLAMA_3_8B.write(tmp.path(), 1).unwrap();
    let weights = tmp.path().join("model.safetensors");
    for (header, why) in [
        (
            &br#"{"w":{"dtype":"BF16","shape":["x"],"data_offsets":[0,2]}}"#[..],
            "not a valid safetensors header",
        ),
        (
            br#"{"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,2]}}"#,
            "its BF16 shape needs 6 bytes but its data_offsets span 2",
        ),
        (
            br#"{"w":{"dtype":"BF16","shape":[1],"data_offsets":[4,2]}}"#,
            "data_offsets that end before they begin",
        ),
        (br#"[1, 2]"#, "not a valid safetensors header"),
    ] {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 8]);
        std::fs::write(&weights, &bytes).unwrap();
        let e = err(tmp.path());
        assert!(
            e.starts_with(&weights.display().to_string()) && e.contains(why),
            "{e}"
        );
    }
}
