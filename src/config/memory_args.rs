//! The engine flags that decide how much GPU memory an engine needs, read and checked at
//! configuration time so that a bad value is one line naming the model's params. The
//! context length, the GPU-memory fraction and the parallel sizes are read in each engine's
//! own spelling (its profile's [`Concept`]s); the finer vLLM flags (KV-cache dtype, block
//! size, ...) only for vLLM models, the others' estimates taking the model's own dtype.

use super::{ConfigError, EngineArgs};
use crate::engines::{self, Concept, Engine, GpuCount};

/// KV cache dtypes vLLM accepts for `--kv-cache-dtype` (`CacheDType` in vllm/config/cache.py).
pub const KV_CACHE_DTYPES: &[&str] = &[
    "auto",
    "bfloat16",
    "float16",
    "fp8",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_inc",
    "fp8_ds_mla",
];

/// Model dtypes vLLM accepts for `--dtype` (`_STR_DTYPE_TO_TORCH_DTYPE` in vllm/config/model.py).
pub const DTYPES: &[&str] = &["auto", "half", "float16", "bfloat16", "float", "float32"];

/// The memory-relevant engine flags of one model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryArgs {
    /// The context length (vLLM `--max-model-len`, SGLang `--context-length`, TGI
    /// `--max-total-tokens`, llama.cpp `--ctx-size`), else the engine's default; `None` for
    /// the model's own (vLLM `auto`/`-1`, llama.cpp `0` included).
    pub max_model_len: Option<u64>,
    /// `--kv-cache-dtype`, one of [`KV_CACHE_DTYPES`]; `None` for `auto`.
    pub kv_cache_dtype: Option<String>,
    /// `--dtype`, one of [`DTYPES`]; `None` for `auto`.
    pub dtype: Option<String>,
    /// `--quantization` / `-q`, as given.
    pub quantization: Option<String>,
    /// The user's own GPU-memory fraction (vLLM `--gpu-memory-utilization`, SGLang
    /// `--mem-fraction-static`, TGI `--cuda-memory-fraction`), in (0, 1].
    pub gpu_memory_utilization: Option<f64>,
    /// `--enforce-eager`: no CUDA graphs.
    pub enforce_eager: bool,
    /// `--block-size`; `None` for vLLM's default.
    pub block_size: Option<u64>,
    /// `--max-num-batched-tokens`; `None` for vLLM's default.
    pub max_num_batched_tokens: Option<u64>,
    /// The tensor-parallel size (vLLM `-tp`, SGLang `--tp-size`, TGI `--num-shard`).
    pub tensor_parallel: u32,
    /// The pipeline-parallel size; for llama.cpp, which splits layers over its GPUs, the
    /// number of GPUs.
    pub pipeline_parallel: u32,
}

/// vLLM's `human_readable_int` (vllm/engine/arg_utils.py): `8192`, `32k` (×1000), `32K`
/// (×1024), and `m`/`M`, `g`/`G` alike; decimals only with the lowercase (decimal) suffixes.
pub fn human_int(text: &str) -> Option<u64> {
    let t = text.trim();
    let (mult, binary) = match t.chars().last()? {
        'k' => (1e3, false),
        'm' => (1e6, false),
        'g' => (1e9, false),
        'K' => (1024.0, true),
        'M' => (1024.0 * 1024.0, true),
        'G' => (1024.0 * 1024.0 * 1024.0, true),
        _ => return t.parse().ok(),
    };
    let number = &t[..t.len() - 1];
    if binary && number.contains('.') {
        return None;
    }
    let n: f64 = number.parse().ok()?;
    (n.is_finite() && n >= 0.0 && n * mult < 1e15).then_some((n * mult) as u64)
}

impl MemoryArgs {
    /// Reads the flags of a model of `engine` with `gpus` GPUs; `origin` (e.g.
    /// `models[0].params`) names them in errors.
    pub fn from_args(
        engine: Engine,
        args: &EngineArgs,
        origin: &str,
        gpus: u32,
    ) -> Result<Self, ConfigError> {
        let profile = engine.profile();
        let err = |problem: String| ConfigError::Params {
            origin: origin.to_string(),
            problem,
        };
        let one = |a: &super::Arg| -> Result<(String, String), ConfigError> {
            match a.values.as_slice() {
                [v] => Ok((a.spelling.clone(), v.clone())),
                _ => Err(err(format!(
                    "{} takes one value, got {:?}",
                    a.spelling,
                    a.values.join(" ")
                ))),
            }
        };
        // The last occurrence wins, as with argparse.
        let value = |name: &str| -> Result<Option<(String, String)>, ConfigError> {
            args.args
                .iter()
                .rev()
                .find(|a| a.name == name)
                .map(one)
                .transpose()
        };
        let concept = |c: Concept| -> Result<Option<(String, String)>, ConfigError> {
            engines::concept_arg(engine, args, c).map(one).transpose()
        };
        let positive = |found: Option<(String, String)>, suffixes: bool| match found {
            None => Ok(None),
            Some((flag, v)) => {
                let n = if suffixes {
                    human_int(&v)
                } else {
                    v.trim().parse::<u64>().ok()
                };
                match n {
                    Some(n) if n > 0 => Ok(Some(n)),
                    _ => Err(err(format!(
                        "{flag} must be a positive whole number, got {v:?}"
                    ))),
                }
            }
        };
        let rule = profile.context;
        let max_model_len = match concept(Concept::MaxContext)? {
            Some((_, v)) if rule.model_values.contains(&v.trim()) => None,
            None => rule.default,
            found => positive(found, rule.suffixes)?,
        };
        let gpu_memory_utilization = match concept(Concept::GpuMemoryFraction)? {
            None => None,
            Some((flag, v)) => match v.trim().parse::<f64>() {
                Ok(f) if f.is_finite() && f > 0.0 && f <= 1.0 => Some(f),
                _ => {
                    return Err(err(format!(
                        "{flag} must be a fraction above 0 and at most 1, got {v:?}"
                    )));
                }
            },
        };
        let size = |c: Concept| match profile.flag(c) {
            Some(flag) => args.positive_int(&engines::dashed(flag), origin),
            None => Ok(1),
        };
        let (tensor_parallel, pipeline_parallel) = match profile.gpu_count {
            GpuCount::Layers { .. } => (1, gpus.max(1)),
            _ => (
                size(Concept::TensorParallel)?,
                size(Concept::PipelineParallel)?,
            ),
        };
        let mut m = MemoryArgs {
            max_model_len,
            gpu_memory_utilization,
            tensor_parallel,
            pipeline_parallel,
            ..MemoryArgs::default()
        };
        if engine != Engine::Vllm {
            return Ok(m);
        }
        let choice = |name: &str, allowed: &[&str]| -> Result<Option<String>, ConfigError> {
            match value(name)? {
                None => Ok(None),
                Some((_, v)) if v == "auto" => Ok(None),
                Some((_, v)) if allowed.contains(&v.as_str()) => Ok(Some(v)),
                Some((flag, v)) => Err(err(format!(
                    "{flag} {v:?} is not one of {}",
                    allowed.join(", ")
                ))),
            }
        };
        m.kv_cache_dtype = choice("--kv-cache-dtype", KV_CACHE_DTYPES)?;
        m.dtype = choice("--dtype", DTYPES)?;
        m.quantization = value("--quantization")?.map(|(_, v)| v);
        m.enforce_eager = args.has("--enforce-eager");
        m.block_size = positive(value("--block-size")?, true)?;
        m.max_num_batched_tokens = positive(value("--max-num-batched-tokens")?, true)?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(params: &str) -> Result<MemoryArgs, String> {
        let args = EngineArgs::parse(params, "models[0].params").unwrap();
        MemoryArgs::from_args(Engine::Vllm, &args, "models[0].params", 1).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_in_every_spelling() {
        let m = read(
            "--max-model-len 32k --kv_cache_dtype=fp8 -q fp8 --gpu-memory-utilization 0.45 \
             --enforce-eager -tp 2 --block-size 32 --dtype bfloat16",
        )
        .unwrap();
        assert_eq!(m.max_model_len, Some(32_000));
        assert_eq!(m.kv_cache_dtype.as_deref(), Some("fp8"));
        assert_eq!(m.quantization.as_deref(), Some("fp8"));
        assert_eq!(m.gpu_memory_utilization, Some(0.45));
        assert!(m.enforce_eager);
        assert_eq!((m.tensor_parallel, m.pipeline_parallel), (2, 1));
        assert_eq!(m.block_size, Some(32));
        assert_eq!(m.dtype.as_deref(), Some("bfloat16"));
        assert_eq!(
            read("--max-model-len 8K").unwrap().max_model_len,
            Some(8192)
        );
        assert_eq!(read("--max-model-len auto").unwrap().max_model_len, None);
        assert_eq!(read("--max-model-len=-1").unwrap().max_model_len, None);
        assert_eq!(read("--kv-cache-dtype auto").unwrap().kv_cache_dtype, None);
        assert_eq!(
            read("").unwrap(),
            MemoryArgs {
                tensor_parallel: 1,
                pipeline_parallel: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn bad_values_are_one_line_naming_the_params() {
        for (params, expected) in [
            (
                "--gpu-memory-utilization 1.5",
                "models[0].params: --gpu-memory-utilization must be a fraction above 0 and at most 1, got \"1.5\"",
            ),
            (
                "--gpu-memory-utilization=-0.3",
                "models[0].params: --gpu-memory-utilization must be a fraction above 0 and at most 1, got \"-0.3\"",
            ),
            ("--gpu-memory-utilization 0", "must be a fraction above 0"),
            (
                "--gpu-memory-utilization lots",
                "must be a fraction above 0",
            ),
            (
                "--max-model-len 0",
                "models[0].params: --max-model-len must be a positive whole number, got \"0\"",
            ),
            (
                "--max-model-len 1.5K",
                "--max-model-len must be a positive whole number",
            ),
            (
                "--max_model_len long",
                "--max_model_len must be a positive whole number, got \"long\"",
            ),
            (
                "--kv-cache-dtype fp4",
                "--kv-cache-dtype \"fp4\" is not one of auto, bfloat16",
            ),
            ("--dtype int3", "--dtype \"int3\" is not one of auto, half"),
            ("--max-model-len 1 2", "--max-model-len takes one value"),
        ] {
            let e = read(params).unwrap_err();
            assert!(e.contains(expected), "{params}: {e}");
            assert!(e.starts_with("models[0].params: "), "{e}");
        }
    }
}
