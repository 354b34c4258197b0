//! SGLang's HTTP server (`python -m sglang.launch_server`).
//!
//! Read from the `sglang` 0.5.23 wheel on the Python registry:
//! `sglang/srt/arg_groups/fields/{model,serving,parallel,lora,schedule,observability}.py`
//! (flags are the field names with dashes; `--model` and `--tensor-parallel-size`,
//! `--pipeline-parallel-size`, `--data-parallel-size` are accepted aliases) and
//! `sglang/srt/entrypoints/http_server.py` (`/health`, `/v1/models`, `/metrics` when
//! `--enable-metrics`, series named `sglang:*`). `--lora-paths` takes `NAME=PATH` values after
//! one flag and turns LoRA on by itself.

use super::profile::*;

/// The `sglang` profile.
pub static PROFILE: Profile = Profile {
    name: "sglang",
    server: "SGLang (sglang.launch_server)",
    source: "sglang 0.5.23 wheel (srt/arg_groups/fields/*.py, srt/entrypoints/http_server.py)",
    default_cmd: &["python3", "-m", "sglang.launch_server"],
    model_flag: "--model-path",
    model_positional_after: None,
    host_flag: "--host",
    port_flag: "--port",
    served_name: ServedName::One("--served-model-name"),
    flag_style: FlagStyle::Dashes,
    aliases: &[
        ("--model", "--model-path"),
        ("--tensor-parallel-size", "--tp-size"),
        ("--pipeline-parallel-size", "--pp-size"),
        ("--data-parallel-size", "--dp-size"),
    ],
    vocabulary: &[
        (Concept::ModelPath, "--model-path"),
        (Concept::Host, "--host"),
        (Concept::Port, "--port"),
        (Concept::ServedName, "--served-model-name"),
        (Concept::TensorParallel, "--tp-size"),
        (Concept::PipelineParallel, "--pp-size"),
        (Concept::DataParallel, "--dp-size"),
        (Concept::EnableLora, "--enable-lora"),
        (Concept::Adapters, "--lora-paths"),
        (Concept::GpuMemoryFraction, "--mem-fraction-static"),
        (Concept::MaxContext, "--context-length"),
        (Concept::Metrics, "--enable-metrics"),
        (Concept::ApiKey, "--api-key"),
        // The device type (`cuda`, `cpu`, ...), not llama.cpp's device list; listed so that
        // it is not taken for llama.cpp's flag.
        (Concept::Devices, "--device"),
    ],
    // With --enable-dp-attention the data-parallel ranks live inside the TP group.
    gpu_count: GpuCount::Product {
        factors: &["--tp-size", "--pp-size", "--dp-size"],
        last_factor_unless: Some("--enable-dp-attention"),
    },
    adapters: AdapterStyle::NamedValues {
        flag: "--lora-paths",
        enable: None,
    },
    context: ContextRule {
        default: None,
        model_values: &[],
        suffixes: false,
    },
    health_path: "/health",
    metrics: Some(Metrics {
        path: "/metrics",
        prefix: "sglang:",
        // `srt/metrics/collector.py`: the token counters grow only when a request finishes
        // (`observe_one_finished_request`), so the scheduler's gauges, refreshed every few
        // dozen decode steps and at each prefill, say that it is stepping.
        progress: ProgressMetrics {
            running: "sglang:num_running_reqs",
            generated: None,
            progress: &[
                "sglang:num_used_tokens",
                "sglang:gen_throughput",
                "sglang:generation_tokens_total",
                "sglang:prompt_tokens_total",
                "sglang:num_requests_total",
            ],
        },
    }),
    default_flags: &["--enable-metrics"],
    env: &[],
    per_instance: &[],
    cpu_bind: CpuBind::None,
    api_key_env: None,
    models_list: ModelsList::FirstName,
    request_model: None,
    uuid_request_ids: false,
};
