//! How much GPU memory a vLLM engine needs, estimated from the model's files without reading
//! its weights (SPEC §3.1): the tensors declared in its safetensors headers (else the weight
//! files' sizes), adapters added; the KV cache for one sequence of `max_model_len` tokens from
//! `config.json`; a fixed overhead. Where each number comes from in vLLM is written next to it.
//!
//! vLLM sizes itself at start like this (vllm/v1/worker/gpu_worker.py, `init_device` and
//! `determine_available_memory`; vllm/utils/mem_utils.py, `memory_profiling`):
//! `requested = total_gpu_memory × gpu_memory_utilization`; it refuses to start when less than
//! that is free; it loads the weights, runs a profiling forward pass, and what is left of
//! `requested` after weights, the activation peak and non-torch allocations becomes the KV
//! cache, which must hold at least one `max_model_len` request
//! (vllm/v1/core/kv_cache_utils.py, `check_enough_kv_cache_memory`). The CUDA context (made
//! before the first memory snapshot) and the CUDA graphs (captured after the KV cache is
//! allocated, `compile_or_warm_up_model`) come on top of `requested`.

mod files;
pub mod fixtures;
mod gguf;
pub mod model_config;
pub mod safetensors;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::MemoryArgs;
use crate::gpu::{Need, gib};
use files::{Weights, files_with, find_weights};
pub use gguf::write_minimal as write_minimal_gguf;
pub use model_config::Shape;

const MIB: u64 = 1 << 20;

/// vLLM's default KV-cache block size in tokens (`CacheConfig.DEFAULT_BLOCK_SIZE`,
/// vllm/config/cache.py). KV memory is allocated in whole blocks.
pub const DEFAULT_BLOCK_SIZE: u64 = 16;

/// vLLM's default `max_num_batched_tokens` for the OpenAI server: 8192 on GPUs of 70 GiB and
/// more (except A100s), 2048 on the others (`EngineArgs.get_batch_defaults`,
/// vllm/engine/arg_utils.py); the larger is taken, an upper bound. Only sliding-window
/// layers use it: they keep `sliding_window - 1 + max_num_batched_tokens` tokens
/// (`SlidingWindowSpec.max_memory_usage_bytes`, vllm/v1/kv_cache_interface.py).
pub const DEFAULT_BATCHED_TOKENS: u64 = 8192;

/// The activation peak of vLLM's profiling forward pass (`profile_run`, counted as
/// `torch_peak_increase`). vLLM reports 1.26 GiB for Meta-Llama-3-8B at its defaults
/// (vllm-project/vllm#10511, "PyTorch activation peak memory 1.26GiB"); 1.19-1.24 GiB in
/// later logs of Llama-3.1-8B. It grows with `max_num_batched_tokens`; fixed here.
pub const ACTIVATION_PEAK: u64 = 1280 * MIB;

/// Non-torch allocations made while loading and profiling (NCCL, attention-backend
/// workspaces: `non_torch_increase` in `memory_profiling`); one-GPU logs of 7-8B models show
/// 0.05-0.35 GiB.
pub const NON_TORCH: u64 = 256 * MIB;

/// Extra non-torch memory with tensor or pipeline parallelism (NCCL and custom all-reduce
/// buffers): vllm-project/vllm#10511 shows non_torch_memory 3.58 GiB with `-tp 2` against
/// 1.79 GiB on one GPU for the same model.
pub const COLLECTIVES: u64 = 1792 * MIB;

/// The CUDA context and library workspaces (cuBLAS, cuDNN) of an engine process, which exist
/// before vLLM's first memory snapshot and so sit outside its utilization.
pub const CUDA_CONTEXT: u64 = 512 * MIB;

/// CUDA graphs, captured after the KV cache is sized and so outside the utilization
/// (`capture_model` in `compile_or_warm_up_model`, logged as "Graph capturing finished in N
/// secs, took X GiB": a few hundred MiB for 7-8B models). 0 with `--enforce-eager`.
pub const CUDA_GRAPHS: u64 = 512 * MIB;

/// Why a model's files cannot be sized. One line: the file, then the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct WeightsError {
    /// The file or directory at fault.
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

impl WeightsError {
    fn new(path: &Path, problem: String) -> Self {
        WeightsError {
            path: path.display().to_string(),
            problem,
        }
    }
}

/// A model's estimated GPU memory need (`memory_estimate` in `plan --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// Weights as loaded (in the model's dtype), adapters included, over all its GPUs.
    pub weights_bytes: u64,
    /// KV cache for one sequence of `max_model_len` tokens, over all its GPUs.
    pub kv_cache_bytes: u64,
    /// CUDA context, CUDA graphs, activation peak and non-torch allocations, over all its GPUs.
    pub overhead_bytes: u64,
    /// The sum of the three.
    pub total_bytes: u64,
    /// What it needs on each of its GPUs.
    pub per_gpu_bytes: u64,
    /// The sequence length the KV cache is sized for.
    pub max_model_len: u64,
    /// How many GPUs the figures are spread over (tensor × pipeline parallel size; each
    /// data-parallel replica needs as much again on GPUs of its own).
    pub gpus: u32,
    /// Per GPU, split into what vLLM counts inside its utilization and what comes on top.
    #[serde(skip)]
    pub need: Need,
}

impl MemoryEstimate {
    /// `17.5 GiB (weights 15.0 GiB, KV cache 1.0 GiB for 8192 tokens, overhead 2.5 GiB)`.
    pub fn describe(&self) -> String {
        let spread = if self.gpus > 1 {
            format!(
                ", {} per GPU on {} GPUs",
                gib(self.per_gpu_bytes),
                self.gpus
            )
        } else {
            String::new()
        };
        format!(
            "{} (weights {}, KV cache {} for {} tokens, overhead {}{spread})",
            gib(self.total_bytes),
            gib(self.weights_bytes),
            gib(self.kv_cache_bytes),
            self.max_model_len,
            gib(self.overhead_bytes)
        )
    }
}

/// Bytes per element of 16/32-bit floating weights as vLLM loads them: `--dtype` when
/// given, else the config's dtype, with float32 models downcast to 16 bits ("Downcast for
/// float32 models", `_resolve_auto_dtype` in vllm/config/model.py).
fn model_dtype_bytes(args: &MemoryArgs) -> u64 {
    match args.dtype.as_deref() {
        Some("float" | "float32") => 4,
        _ => 2,
    }
}

/// Bytes per element the checkpoint's floating tensors are stored in, per the config.
fn stored_dtype_bytes(shape: &Shape) -> u64 {
    match shape.dtype.as_deref() {
        Some("float32" | "float") => 4,
        _ => 2,
    }
}

fn size_of(files: &[PathBuf]) -> Result<u64, WeightsError> {
    files.iter().try_fold(0u64, |sum, f| {
        let len = f
            .metadata()
            .map_err(|e| WeightsError::new(f, format!("cannot read it: {e}")))?
            .len();
        Ok(sum.saturating_add(len))
    })
}

/// Weights of safetensors files as vLLM holds them in GPU memory.
fn safetensors_bytes(
    files: &[PathBuf],
    dtype_bytes: u64,
    args: &MemoryArgs,
) -> Result<u64, WeightsError> {
    // Online fp8 quantization (`-q fp8` on a 16-bit checkpoint) stores linear layers' weights
    // in one byte each (`Fp8LinearMethod`, vllm/model_executor/layers/quantization/fp8.py);
    // embeddings and the LM head stay in the model dtype.
    let online_fp8 = args.quantization.as_deref() == Some("fp8");
    let mut total = 0u64;
    for f in files {
        for t in safetensors::read(f)? {
            let bytes = if !t.floating {
                t.bytes
            } else if online_fp8 && t.linear {
                t.numel
            } else {
                t.numel.saturating_mul(dtype_bytes)
            };
            total = total.saturating_add(bytes);
        }
    }
    Ok(total)
}

/// LoRA adapters' weights: their safetensors headers, else their files' sizes. Adapters that
/// are not on disk (Hugging Face ids) count nothing.
fn adapter_bytes(
    adapters: &[&Path],
    dtype_bytes: u64,
    args: &MemoryArgs,
) -> Result<u64, WeightsError> {
    let mut total = 0u64;
    for a in adapters {
        let bytes = if a.is_file() {
            size_of(&[a.to_path_buf()])?
        } else if a.is_dir() {
            let st = files_with(a, "safetensors")?;
            if st.is_empty() {
                size_of(&files_with(a, "bin")?)?
            } else {
                safetensors_bytes(
                    &st,
                    dtype_bytes,
                    &MemoryArgs {
                        quantization: None,
                        ..args.clone()
                    },
                )?
            }
        } else {
            0
        };
        total = total.saturating_add(bytes);
    }
    Ok(total)
}

/// KV cache for one `max_model_len` request on one GPU, as vLLM's admission check counts it:
/// per layer `cdiv(tokens, block_size) × page_size`, with `page_size = 2 × block_size ×
/// num_kv_heads × head_size × dtype_size` (`FullAttentionSpec`, vllm/v1/kv_cache_interface.py),
/// KV heads split over tensor-parallel ranks but never below one (`get_num_kv_heads`), layers
/// split over pipeline stages.
fn kv_per_gpu(shape: &Shape, args: &MemoryArgs, model_len: u64, dtype_bytes: u64) -> u64 {
    if shape.encoder_only {
        return 0;
    }
    let block = args.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
    let batched = args
        .max_num_batched_tokens
        .unwrap_or(DEFAULT_BATCHED_TOKENS);
    let tp = u64::from(args.tensor_parallel.max(1));
    let pp = u64::from(args.pipeline_parallel.max(1));
    let elt = match args.kv_cache_dtype.as_deref() {
        Some(d) if d.starts_with("fp8") => 1,
        Some(_) => 2,
        None => dtype_bytes,
    };
    let heads = (shape.kv_heads / tp).max(1);
    // fp8_ds_mla pages hold 656 bytes per token (`MLAAttentionSpec.real_page_size_bytes`).
    let per_token = if shape.mla && args.kv_cache_dtype.as_deref() == Some("fp8_ds_mla") {
        656
    } else {
        heads.saturating_mul(shape.kv_width).saturating_mul(elt)
    };
    let full_blocks = model_len.div_ceil(block);
    let all_layers: u64 = shape
        .windows
        .iter()
        .map(|w| {
            let blocks = match w {
                None => full_blocks,
                // `SlidingWindowSpec`: the window plus one scheduling step, one spare block.
                Some(w) => {
                    (w.saturating_sub(1).saturating_add(batched))
                        .min(model_len)
                        .div_ceil(block)
                        + 1
                }
            };
            blocks.saturating_mul(block).saturating_mul(per_token)
        })
        .fold(0u64, u64::saturating_add);
    let layers = shape.layers.max(1);
    let stage_layers = layers.div_ceil(pp);
    ((all_layers as u128 * stage_layers as u128).div_ceil(layers as u128)).min(u64::MAX as u128)
        as u64
}

/// Estimates a model's need. `None` when `model_path` is not on disk (a Hugging Face id):
/// such a model gets whole GPUs.
pub fn estimate(
    model_path: &Path,
    adapters: &[&Path],
    args: &MemoryArgs,
) -> Result<Option<MemoryEstimate>, WeightsError> {
    if !model_path.exists() {
        return Ok(None);
    }
    let weights = find_weights(model_path)?;
    let dir = if model_path.is_file() {
        model_path.parent().unwrap_or(Path::new("."))
    } else {
        model_path
    };
    let shape = match &weights {
        Weights::Gguf(files) if !dir.join("config.json").exists() => gguf::read(&files[0])?,
        _ => model_config::read(dir)?,
    };
    let dtype_bytes = model_dtype_bytes(args);
    let weights_bytes = match &weights {
        Weights::Safetensors(files) => safetensors_bytes(files, dtype_bytes, args)?,
        Weights::Pickled(files) => {
            (size_of(files)? as u128 * dtype_bytes as u128 / stored_dtype_bytes(&shape) as u128)
                as u64
        }
        Weights::Gguf(files) => size_of(files)?,
    }
    .saturating_add(adapter_bytes(adapters, dtype_bytes, args)?);

    let gpus = args
        .tensor_parallel
        .max(1)
        .saturating_mul(args.pipeline_parallel.max(1));
    let n = u64::from(gpus);
    let model_len = args.max_model_len.unwrap_or(shape.max_len);
    let kv = kv_per_gpu(&shape, args, model_len, dtype_bytes);
    let collectives = if gpus > 1 { COLLECTIVES } else { 0 };
    let inside_overhead = ACTIVATION_PEAK + NON_TORCH + collectives;
    let outside = CUDA_CONTEXT + if args.enforce_eager { 0 } else { CUDA_GRAPHS };
    let need = Need {
        inside: weights_bytes
            .div_ceil(n)
            .saturating_add(kv)
            .saturating_add(inside_overhead),
        outside,
    };
    let kv_cache_bytes = kv.saturating_mul(n);
    let overhead_bytes = (inside_overhead + outside).saturating_mul(n);
    Ok(Some(MemoryEstimate {
        weights_bytes,
        kv_cache_bytes,
        overhead_bytes,
        total_bytes: weights_bytes
            .saturating_add(kv_cache_bytes)
            .saturating_add(overhead_bytes),
        per_gpu_bytes: need.inside.saturating_add(need.outside),
        max_model_len: model_len,
        gpus,
        need,
    }))
}

#[cfg(test)]
mod tests;
