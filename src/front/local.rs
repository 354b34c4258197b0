//! The paths the front answers itself, and the engine control paths it never passes on.
//! Both wires ask [`classify`] and [`is_engine_control`]: there is one list of each.

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::{App, health, page};

/// A path the front serves itself (`GET` or `HEAD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// `/health`, `/ping` (SageMaker) and `MODEL_DEPLOY_HEALTH_ENDPOINT`.
    Health,
    /// `/livez`.
    Livez,
    /// `/metrics`.
    Metrics,
    /// `/v1/models`.
    Models,
    /// `/v1/models/{id}`.
    Model(String),
    /// `/` asked for by a browser (`Accept: text/html`): the status page.
    Page,
    /// `/status`: the status page's JSON.
    Status,
}

impl Local {
    /// True when the API key guards it (the model list); health and metrics stay open.
    pub fn needs_key(&self) -> bool {
        matches!(self, Local::Models | Local::Model(_))
    }

    /// True for the paths that are the front's own only when read (`GET`, `HEAD`): other
    /// methods there get the usual rules, as for any path, rather than a 405.
    pub fn read_only(&self) -> bool {
        matches!(self, Local::Page | Local::Status)
    }

    /// True for what the health listener serves too.
    pub fn is_health(&self) -> bool {
        matches!(self, Local::Health | Local::Livez | Local::Metrics)
    }

    /// The answer.
    pub async fn serve(self, app: Arc<App>, headers: HeaderMap) -> Response {
        match self {
            Local::Health => health::health(State(app)).await,
            Local::Livez => health::livez().await,
            Local::Metrics => health::metrics(State(app)).await,
            Local::Models => health::list_models(State(app), headers).await,
            Local::Model(id) => health::get_model(State(app), Path(id), headers).await,
            Local::Page => page::page(),
            Local::Status => page::status(&app),
        }
    }
}

/// The local path `path` (without its query) names, if any; `browser`: the request
/// accepts `text/html` (only then is `/` the status page).
pub fn classify(path: &str, health_endpoint: &str, browser: bool) -> Option<Local> {
    match path {
        // The operator's own health path wins over the front's other names.
        p if p == health_endpoint => Some(Local::Health),
        "/health" | "/ping" => Some(Local::Health),
        "/livez" => Some(Local::Livez),
        "/metrics" => Some(Local::Metrics),
        "/v1/models" => Some(Local::Models),
        "/" if browser => Some(Local::Page),
        "/status" => Some(Local::Status),
        p => p
            .strip_prefix("/v1/models/")
            .filter(|id| !id.is_empty())
            .map(|id| Local::Model(percent_decode(id))),
    }
}

/// Engine paths that control the engine rather than ask it for inference: vLLM's
/// (development mode, sleep mode, LoRA at run time, profiler, RLHF weight updates,
/// elastic EP), SGLang's and llama.cpp's. Only modelmux calls them, on loopback.
pub const ENGINE_CONTROL_PATHS: &[&str] = &[
    // vLLM
    "/sleep",
    "/wake_up",
    "/is_sleeping",
    "/collective_rpc",
    "/reset_prefix_cache",
    "/reset_mm_cache",
    "/reset_encoder_cache",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/start_profile",
    "/stop_profile",
    "/server_info",
    "/reconfigure",
    "/scale_elastic_ep",
    "/is_scaling_elastic_ep",
    "/pause",
    "/resume",
    "/is_paused",
    "/abort_requests",
    "/init_weight_transfer_engine",
    "/start_weight_update",
    "/start_draft_weight_update",
    "/update_weights",
    "/finish_weight_update",
    "/update_weight_version",
    "/weight_info",
    "/weight_checker",
    "/get_world_size",
    // SGLang
    "/flush_cache",
    "/update_weights_from_disk",
    "/update_weights_from_tensor",
    "/update_weights_from_distributed",
    "/init_weights_update_group",
    "/release_memory_occupation",
    "/resume_memory_occupation",
    "/load_lora_adapter",
    "/unload_lora_adapter",
    "/abort_request",
    "/configure_logging",
    "/set_internal_state",
    "/slow_down",
    "/pause_generation",
    "/continue_generation",
    "/freeze_gc",
    "/start_expert_distribution_record",
    "/stop_expert_distribution_record",
    "/dump_expert_distribution_record",
    // llama.cpp
    "/slots",
    "/props",
    "/lora-adapters",
];

/// Path prefixes that are control paths as a whole.
const ENGINE_CONTROL_PREFIXES: &[&str] = &["/slots/", "/admin/"];

/// True when `path` (without its query) reaches an engine control path, in any spelling
/// an engine would still route there: percent-escapes, repeated or trailing slashes, dot
/// segments.
pub fn is_engine_control(path: &str) -> bool {
    static SORTED: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
        let mut paths = ENGINE_CONTROL_PATHS.to_vec();
        paths.sort_unstable();
        paths
    });
    let control = |p: &str| {
        SORTED.binary_search(&p).is_ok()
            || ENGINE_CONTROL_PREFIXES
                .iter()
                .any(|pre| p.starts_with(pre) || p == &pre[..pre.len() - 1])
    };
    // The usual path is already canonical: no copy needed.
    let b = path.as_bytes();
    let plain = !b.iter().any(|c| matches!(c, b'%' | b'\\'))
        && !b
            .windows(2)
            .any(|w| w[0] == b'/' && matches!(w[1], b'/' | b'.'))
        && (b.len() == 1 || !path.ends_with('/'));
    if plain {
        control(path)
    } else {
        control(&canonical_path(path))
    }
}

/// Decodes `%XX` escapes (invalid ones stay as they are).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    if !bytes.contains(&b'%') {
        return s.to_string();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path as a router would match it: decoded, with `.` and `..` segments resolved,
/// empty segments and a trailing slash removed.
fn canonical_path(path: &str) -> String {
    // Decode twice: a proxy or framework that decodes once more must not see a control path.
    let decoded = percent_decode(&percent_decode(path));
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split(['/', '\\']) {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths() {
        assert_eq!(classify("/health", "/health", false), Some(Local::Health));
        assert_eq!(classify("/ping", "/health", false), Some(Local::Health));
        assert_eq!(classify("/hc", "/hc", false), Some(Local::Health));
        assert_eq!(classify("/livez", "/health", false), Some(Local::Livez));
        assert_eq!(
            classify("/v1/models", "/health", false),
            Some(Local::Models)
        );
        assert_eq!(
            classify("/v1/models/org%2Fname", "/health", false),
            Some(Local::Model("org/name".into()))
        );
        assert_eq!(classify("/v1/models/", "/health", false), None);
        assert_eq!(classify("/v1/completions", "/health", false), None);
        assert_eq!(classify("/", "/health", true), Some(Local::Page));
        assert_eq!(classify("/", "/health", false), None);
        assert_eq!(classify("/status", "/health", false), Some(Local::Status));
        assert!(Local::Status.read_only() && !Local::Status.needs_key());
        assert!(!Local::Page.is_health() && !Local::Health.read_only());
        assert!(Local::Models.needs_key() && !Local::Metrics.needs_key());
    }

    #[test]
    fn control_paths_in_any_spelling() {
        for p in [
            "/sleep",
            "/sleep/",
            "//sleep",
            "/%73leep",
            "/%2573leep",
            "/v1/../collective_rpc",
            "/./wake_up",
            "/v1/load_lora_adapter",
            "/slots/0",
            "/slots",
            "/admin/models",
            "/reset_prefix_cache",
        ] {
            assert!(is_engine_control(p), "{p}");
        }
        for p in [
            "/v1/completions",
            "/v1/chat/completions",
            "/sleepy",
            "/v1/sleep",
            "/tokenize",
            "/v1/embeddings",
        ] {
            assert!(!is_engine_control(p), "{p}");
        }
    }
}
