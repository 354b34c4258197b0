//! llama.cpp's own HTTP server (`llama-server`), and llama-cpp-python's OpenAI server
//! (`python -m llama_cpp.server`), which wraps the same library with another command line.
//!
//! `llamacpp` read from llama.cpp as vendored in llama-cpp-python 0.3.36 (`common/arg.cpp`,
//! `tools/server/server.cpp`): `-m/--model`, `--host`, `--port`, `-a/--alias` (comma list),
//! `-ngl/--gpu-layers/--n-gpu-layers` (default `auto`: offload), `--device none`,
//! `-ts/--tensor-split`, `--lora` (comma list, applied to every request), `-c/--ctx-size`,
//! `--metrics` (series `llamacpp:*`), `/health`, `/v1/models`. No GPU-memory fraction.
//!
//! `llamacpp-python` read from llama-cpp-python 0.3.36 (`llama_cpp/server/settings.py`,
//! `cli.py`, `app.py`): flags are the settings' field names with underscores
//! (`--model_alias`, `--n_gpu_layers` default 0 = CPU, `--n_ctx` default 2048,
//! `--lora_path`), no `/health` and no `/metrics`: readiness is `GET /v1/models`. Its
//! `__main__` binds `$HOST`/`$PORT` when set, over the flags: the launcher sets both.

use super::profile::*;

/// The `llamacpp` profile (llama.cpp's `llama-server`).
pub static LLAMA_SERVER: Profile = Profile {
    name: "llamacpp",
    server: "llama.cpp (llama-server)",
    source: "llama.cpp as vendored in llama-cpp-python 0.3.36 (common/arg.cpp, tools/server/server.cpp)",
    default_cmd: &["llama-server"],
    model_flag: "--model",
    model_positional_after: None,
    host_flag: "--host",
    port_flag: "--port",
    served_name: ServedName::Comma("--alias"),
    flag_style: FlagStyle::Dashes,
    aliases: &[
        ("-m", "--model"),
        ("-a", "--alias"),
        ("-ngl", "--n-gpu-layers"),
        ("--gpu-layers", "--n-gpu-layers"),
        ("-ts", "--tensor-split"),
        ("-dev", "--device"),
        ("-c", "--ctx-size"),
        ("-t", "--threads"),
        ("-C", "--cpu-mask"),
        ("-Cr", "--cpu-range"),
    ],
    vocabulary: &[
        (Concept::ModelPath, "--model"),
        (Concept::Host, "--host"),
        (Concept::Port, "--port"),
        (Concept::ServedName, "--alias"),
        (Concept::GpuLayers, "--n-gpu-layers"),
        (Concept::Devices, "--device"),
        (Concept::TensorSplit, "--tensor-split"),
        (Concept::Adapters, "--lora"),
        (Concept::MaxContext, "--ctx-size"),
        (Concept::Metrics, "--metrics"),
        (Concept::ApiKey, "--api-key"),
    ],
    gpu_count: GpuCount::Layers {
        layers: "--n-gpu-layers",
        offloads_by_default: true,
        tensor_split: "--tensor-split",
        devices: Some("--device"),
    },
    adapters: AdapterStyle::Unnamed { flag: "--lora" },
    // `-c 0` (and the default, `n_ctx = 0` in common/common.h): the model's training context.
    context: ContextRule {
        default: None,
        model_values: &["0"],
        suffixes: false,
    },
    health_path: "/health",
    metrics: Some(Metrics {
        path: "/metrics",
        prefix: "llamacpp:",
        // `tools/server/server-task.cpp` (`to_metrics`): `n_decode_total` grows with every
        // `llama_decode()` call; the token counters when a request's slot is released. The
        // server's main loop answers `/metrics`, so a loop stuck in a decode does not answer
        // it at all: no reading, no verdict (the health probe does not go through that loop).
        progress: ProgressMetrics {
            running: "llamacpp:requests_processing",
            generated: None,
            progress: &[
                "llamacpp:n_decode_total",
                "llamacpp:prompt_tokens_total",
                "llamacpp:tokens_predicted_total",
            ],
        },
    }),
    default_flags: &["--metrics"],
    env: &[],
    per_instance: &[],
    // `common/arg.cpp`: `-C/--cpu-mask M` (hex) binds the threads; `-t/--threads N` must
    // match it or llama.cpp warns and starts one thread per physical core of the machine.
    cpu_bind: CpuBind::MaskFlags {
        mask: "--cpu-mask",
        threads: "--threads",
        own: &["--cpu-mask", "--cpu-range", "--threads"],
    },
    api_key_env: Some("LLAMA_API_KEY"),
    models_list: ModelsList::FirstName,
    request_model: None,
    uuid_request_ids: false,
};

/// The `llamacpp-python` profile (llama-cpp-python's OpenAI server).
pub static LLAMA_CPP_PYTHON: Profile = Profile {
    name: "llamacpp-python",
    server: "llama-cpp-python (python -m llama_cpp.server)",
    source: "llama-cpp-python 0.3.36 (llama_cpp/server/settings.py, cli.py, app.py)",
    default_cmd: &["python3", "-m", "llama_cpp.server"],
    model_flag: "--model",
    model_positional_after: None,
    host_flag: "--host",
    port_flag: "--port",
    served_name: ServedName::One("--model_alias"),
    flag_style: FlagStyle::Underscores,
    aliases: &[],
    vocabulary: &[
        (Concept::ModelPath, "--model"),
        (Concept::Host, "--host"),
        (Concept::Port, "--port"),
        (Concept::ServedName, "--model_alias"),
        (Concept::GpuLayers, "--n_gpu_layers"),
        (Concept::TensorSplit, "--tensor_split"),
        (Concept::Adapters, "--lora_path"),
        (Concept::MaxContext, "--n_ctx"),
        (Concept::ApiKey, "--api_key"),
    ],
    gpu_count: GpuCount::Layers {
        layers: "--n-gpu-layers",
        offloads_by_default: false,
        tensor_split: "--tensor-split",
        devices: None,
    },
    adapters: AdapterStyle::Unnamed {
        flag: "--lora_path",
    },
    // `n_ctx: int = Field(default=2048)` in settings.py; 0 is the model's own, as in llama.cpp.
    context: ContextRule {
        default: Some(2048),
        model_values: &["0"],
        suffixes: false,
    },
    health_path: "/v1/models",
    metrics: None,
    default_flags: &[],
    // `uvicorn.run(host=os.getenv("HOST", ...), port=int(os.getenv("PORT", ...)))` in
    // `llama_cpp/server/__main__.py`: the environment wins over --host/--port, and
    // containers set PORT for the front.
    env: &[("HOST", EnvValue::Host), ("PORT", EnvValue::Port)],
    per_instance: &[],
    cpu_bind: CpuBind::None,
    api_key_env: None,
    models_list: ModelsList::FirstName,
    request_model: None,
    // `app.py`: `Middleware(RawContextMiddleware, plugins=(RequestIdPlugin(),))`, which
    // validates X-Request-ID as a UUID and answers 400 with an empty body otherwise.
    uuid_request_ids: true,
};
