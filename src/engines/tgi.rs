//! Hugging Face Text Generation Inference (`text-generation-launcher`).
//!
//! Read from TGI's launcher and router: `launcher/src/main.rs` and `router/src/server.rs`
//! at v3.3.7 (db931fc). clap spells every field with dashes (`--model-id`, `--hostname`,
//! `--num-shard`, `--cuda-memory-fraction`, `--max-total-tokens`, `--lora-adapters`). There is
//! no served-name flag: `/v1/models` lists the model id, and the OpenAI routes read any
//! `"model"` other than `"tgi"` as a LoRA adapter id (`adapter_id: model.filter(|m| *m !=
//! "tgi")`), so requests for the base model must carry `"tgi"`. Every instance defaults to
//! the same Prometheus port (9000), shard socket (`/tmp/text-generation-server`) and
//! torch master port (29500): the launcher gives each engine its own.

use super::profile::*;

/// The `tgi` profile.
pub static PROFILE: Profile = Profile {
    name: "tgi",
    server: "Text Generation Inference (text-generation-launcher)",
    source: "huggingface/text-generation-inference v3.3.7 (launcher/src/main.rs, router/src/server.rs, server/.../utils/adapter.py)",
    default_cmd: &["text-generation-launcher"],
    model_flag: "--model-id",
    model_positional_after: None,
    host_flag: "--hostname",
    port_flag: "--port",
    served_name: ServedName::Absent,
    flag_style: FlagStyle::Dashes,
    aliases: &[("-p", "--port")],
    vocabulary: &[
        (Concept::ModelPath, "--model-id"),
        (Concept::Host, "--hostname"),
        (Concept::Port, "--port"),
        (Concept::TensorParallel, "--num-shard"),
        (Concept::Adapters, "--lora-adapters"),
        (Concept::GpuMemoryFraction, "--cuda-memory-fraction"),
        (Concept::MaxContext, "--max-total-tokens"),
        // The launcher's `--api-key` (env `API_KEY`), passed to the router, which then wants
        // `Authorization: Bearer KEY` on its inference routes (`router/src/server.rs`).
        (Concept::ApiKey, "--api-key"),
    ],
    gpu_count: GpuCount::Shards {
        flag: "--num-shard",
    },
    adapters: AdapterStyle::NamedComma {
        flag: "--lora-adapters",
    },
    context: ContextRule {
        default: None,
        model_values: &[],
        suffixes: false,
    },
    health_path: "/health",
    metrics: Some(Metrics {
        path: "/metrics",
        prefix: "tgi_",
        // The router's batching loop (`backends/v3/src/backend.rs`): the running batch's
        // size, and a counter per successful prefill or decode step.
        progress: ProgressMetrics {
            running: "tgi_batch_current_size",
            generated: None,
            progress: &["tgi_batch_inference_success", "tgi_request_success"],
        },
    }),
    default_flags: &[],
    env: &[],
    per_instance: &[
        PerInstance::Port("--prometheus-port"),
        PerInstance::TmpPath("--shard-uds-path"),
        PerInstance::Port("--master-port"),
    ],
    cpu_bind: CpuBind::None,
    api_key_env: Some("API_KEY"),
    models_list: ModelsList::ModelPath,
    request_model: Some("tgi"),
    uuid_request_ids: false,
};
