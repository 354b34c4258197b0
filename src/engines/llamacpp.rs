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
    ],
    gpu_count: GpuCount::Layers {
        layers: "--n-gpu-layers",
        offloads_by_default: true,
        tensor_split: "--tensor-split",
        devices: Some("--device"),
    },
    adapters: AdapterStyle::Unnamed { flag: "--lora" },
    health_path: "/health",
    metrics: Some(Metrics {
        path: "/metrics",
        prefix: "llamacpp:",
    }),
    default_flags: &["--metrics"],
    env: &[],
    per_instance: &[],
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
    health_path: "/v1/models",
    metrics: None,
    default_flags: &[],
    // `uvicorn.run(host=os.getenv("HOST", ...), port=int(os.getenv("PORT", ...)))` in
    // `llama_cpp/server/__main__.py`: the environment wins over --host/--port, and
    // containers set PORT for the front.
    env: &[("HOST", EnvValue::Host), ("PORT", EnvValue::Port)],
    per_instance: &[],
    models_list: ModelsList::FirstName,
    request_model: None,
    // `app.py`: `Middleware(RawContextMiddleware, plugins=(RequestIdPlugin(),))`, which
    // validates X-Request-ID as a UUID and answers 400 with an empty body otherwise.
    uuid_request_ids: true,
};
