//! Validated process-wide settings: ports, timeouts, policies. Models live in
//! [`super::ModelSpec`]; this is everything else.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, RawConfig};
use crate::engines::Engine;
use crate::gpu::GpuOverride;

/// Default engine command of the default profile: vLLM's own CLI, as vLLM's images run it
/// (the model goes right after `serve`; the `python3 -m vllm.entrypoints.openai.api_server`
/// module still works and takes `--model`). Each profile has its own
/// ([`crate::engines::Profile::default_cmd`]).
pub const DEFAULT_ENGINE_CMD: &str = "vllm serve";
/// Default base directory of relative model paths (where OCI mounts model artifacts).
pub const DEFAULT_MODEL_ROOT: &str = "/opt/ds/model/deployed_model";

/// What to do when a model keeps failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Shut everything down and exit 1 so that the orchestrator restarts the container.
    Exit,
    /// Keep serving the other models; the failed one answers 503.
    Degrade,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting except the models, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Port of the routing front.
    pub port: u16,
    /// Port of the health listener; equal to `port` when one listener serves both.
    pub health_port: u16,
    /// `MODELMUX_ENGINE`: the profile of models that name none.
    pub engine: Engine,
    /// `MODELMUX_ENGINE_CMD`, already split: the command of `engine`'s models without an
    /// `engine_cmd` of their own. `None`: each profile's default.
    pub engine_cmd: Option<Vec<String>>,
    /// The GPU override, if `MODELMUX_GPUS` is set.
    pub gpus: Option<GpuOverride>,
    /// Bearer key the front requires, if any.
    pub api_key: Option<String>,
    /// Bearer key of the admin API (`MODELMUX_ADMIN_KEY`); `None`: no admin API.
    pub admin_key: Option<String>,
    /// How long an engine may take to become ready.
    pub startup_timeout: Duration,
    /// Time between SIGTERM and SIGKILL at shutdown.
    pub shutdown_grace: Duration,
    /// Restarts within 10 minutes before a model is failed.
    pub max_restarts: u32,
    /// Policy for a failed model.
    pub on_failure: OnFailure,
    /// Largest request body the front accepts.
    pub max_body_bytes: usize,
    /// Base of relative model paths.
    pub model_root: PathBuf,
    /// Default `/predict` target.
    pub predict_endpoint: String,
    /// Extra path answering like `/health`.
    pub health_endpoint: String,
    /// Interval between health probes of a ready engine.
    pub health_interval: Duration,
    /// Timeout of one health probe of a ready engine.
    pub health_timeout: Duration,
    /// First restart delay.
    pub restart_delay: Duration,
    /// Address the front and health listeners bind.
    pub host: IpAddr,
    /// Time a client may take to send a request's head.
    pub header_timeout: Duration,
    /// Time an idle keep-alive client connection is kept.
    pub idle_timeout: Duration,
    /// Client connections held at once.
    pub max_connections: usize,
    /// Time a request may wait for a model's concurrency slot.
    pub queue_timeout: Duration,
    /// Silence in a stream after which an SSE comment is sent; `None` when off.
    pub sse_keepalive: Option<Duration>,
    /// Time a client may pause while sending a request body.
    pub body_timeout: Duration,
    /// Time a client may take no bytes of a response waiting for it (nginx's
    /// `send_timeout`).
    pub send_timeout: Duration,
    /// The first engine port (`MODELMUX_ENGINE_BASE_PORT`, default `PORT + 1`): model `i`
    /// gets the `i`-th port from here that is neither `PORT` nor `HEALTH_CHECK_PORT`.
    pub engine_base_port: u16,
    /// How long a ready engine may have requests running without making progress before it
    /// counts as hung and is restarted (`MODELMUX_STALL_TIMEOUT`); `None` (`0`) turns the
    /// check off.
    pub stall_timeout: Option<Duration>,
    /// Interval between "still loading" lines while models load.
    pub progress_interval: Duration,
    /// The fraction of each GPU's memory that all engines on it may use together
    /// (`MODELMUX_GPU_MEMORY_LIMIT`).
    pub gpu_memory_limit: f64,
}

/// Default of `MODELMUX_GPU_MEMORY_LIMIT` (SPEC §2).
pub const DEFAULT_GPU_MEMORY_LIMIT: f64 = 0.92;

/// A fraction in (0, 1], for `MODELMUX_GPU_MEMORY_LIMIT`.
fn fraction(var: &str, value: Option<&str>, default: f64) -> Result<f64, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(ConfigError::var(
            var,
            value,
            "must be a fraction above 0 and at most 1, such as 0.92",
        )),
    }
}

fn parse_port(var: &str, value: &str) -> Result<u16, ConfigError> {
    match value.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ConfigError::var(
            var,
            value,
            "not a port number; use 1-65535",
        )),
    }
}

fn seconds(
    var: &str,
    value: Option<&str>,
    default: f64,
    min: f64,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(Duration::from_secs_f64(default));
    };
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= min && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err(ConfigError::var(
            var,
            value,
            format!("not a number of seconds (at least {min})"),
        )),
    }
}

fn integer<T: std::str::FromStr>(var: &str, value: &str, what: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse::<T>()
        .map_err(|_| ConfigError::var(var, value, what))
}

/// A path for `/predict` or the health alias: must be a plain absolute path.
pub fn endpoint_path(var: &str, value: &str) -> Result<String, ConfigError> {
    let path = if value.starts_with('/') {
        value.to_string()
    } else {
        format!("/{value}")
    };
    if super::is_plain_path(&path) {
        Ok(path)
    } else {
        let example = if var.contains("HEALTH") {
            "/health"
        } else {
            "/v1/completions"
        };
        Err(ConfigError::var(
            var,
            value,
            format!("not a plain path such as {example}"),
        ))
    }
}

/// `MODELMUX_HOST`: an IPv4 or IPv6 address (`[::]` brackets allowed).
fn parse_host(value: &str) -> Result<IpAddr, ConfigError> {
    let v = value.trim();
    let bare = v
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(v);
    bare.parse::<IpAddr>().map_err(|_| {
        ConfigError::var(
            "MODELMUX_HOST",
            value,
            "not an IP address; use 0.0.0.0 (every interface), 127.0.0.1, :: or a host address",
        )
    })
}

/// Splits an engine command line (`MODELMUX_ENGINE_CMD`, a model's `engine_cmd`); `what`
/// names it in the error.
pub fn command_line(what: &str, text: &str) -> Result<Vec<String>, ConfigError> {
    match shlex::split(text) {
        Some(words) if !words.is_empty() => Ok(words),
        _ => Err(ConfigError::var(
            what,
            text,
            "not a command line (empty or an unterminated quote)",
        )),
    }
}

/// Parses the log format alone, so that logging can start before anything else is read.
pub fn log_format(raw: &RawConfig) -> Result<LogFormat, ConfigError> {
    match raw.log_format.as_deref().map(str::trim) {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(ConfigError::var(
            "MODELMUX_LOG_FORMAT",
            other,
            "use text or json",
        )),
    }
}

impl Settings {
    /// Validates every non-model setting.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        log_format(raw)?;
        let port = match &raw.port {
            Some(v) => parse_port("PORT", v)?,
            None => 8080,
        };
        let health_port = match &raw.health_check_port {
            Some(v) => parse_port("HEALTH_CHECK_PORT", v)?,
            None => port,
        };
        let engine = match raw.engine.as_deref() {
            None => Engine::default(),
            Some(name) => Engine::parse(name).ok_or_else(|| {
                ConfigError::var(
                    "MODELMUX_ENGINE",
                    name,
                    format!("unknown engine; use one of {}", Engine::known()),
                )
            })?,
        };
        let engine_base_port = match &raw.engine_base_port {
            Some(v) => parse_port("MODELMUX_ENGINE_BASE_PORT", v)?,
            None => port.checked_add(1).ok_or_else(|| {
                ConfigError::var(
                    "PORT",
                    "65535",
                    "leaves no room for engine ports after it; set MODELMUX_ENGINE_BASE_PORT",
                )
            })?,
        };
        let engine_cmd = raw
            .engine_cmd
            .as_deref()
            .map(|text| command_line("MODELMUX_ENGINE_CMD", text))
            .transpose()?;
        let gpus = raw.gpus.as_deref().map(GpuOverride::parse).transpose()?;
        let api_key = raw
            .api_key
            .as_deref()
            .map(|k| key("MODELMUX_API_KEY", k, "unset it to disable authentication"))
            .transpose()?;
        let admin_key = raw
            .admin_key
            .as_deref()
            .map(|k| {
                key(
                    "MODELMUX_ADMIN_KEY",
                    k,
                    "unset it to turn the admin API off",
                )
            })
            .transpose()?;
        if admin_key.is_some() && admin_key == api_key {
            return Err(ConfigError::var(
                "MODELMUX_ADMIN_KEY",
                "(hidden)",
                "is the same as MODELMUX_API_KEY; the admin key must be a key of its own, which API clients do not hold",
            ));
        }
        let on_failure = match raw.on_failure.as_deref().map(str::trim) {
            None | Some("exit") => OnFailure::Exit,
            Some("degrade") => OnFailure::Degrade,
            Some(other) => {
                return Err(ConfigError::var(
                    "MODELMUX_ON_FAILURE",
                    other,
                    "use exit or degrade",
                ));
            }
        };
        let max_restarts = match &raw.max_restarts {
            Some(v) => integer("MODELMUX_MAX_RESTARTS", v, "not a whole number of restarts")?,
            None => 5,
        };
        let max_body_bytes = match &raw.max_body_bytes {
            Some(v) => match integer::<usize>("MODELMUX_MAX_BODY_BYTES", v, "not a byte count")? {
                0 => {
                    return Err(ConfigError::var(
                        "MODELMUX_MAX_BODY_BYTES",
                        v,
                        "must be above 0",
                    ));
                }
                n => n,
            },
            None => 32 * 1024 * 1024,
        };
        Ok(Settings {
            port,
            health_port,
            engine,
            engine_cmd,
            gpus,
            api_key,
            admin_key,
            startup_timeout: seconds(
                "MODELMUX_STARTUP_TIMEOUT",
                raw.startup_timeout.as_deref(),
                1800.0,
                0.1,
            )?,
            shutdown_grace: seconds(
                "MODELMUX_SHUTDOWN_GRACE",
                raw.shutdown_grace.as_deref(),
                30.0,
                0.0,
            )?,
            max_restarts,
            on_failure,
            max_body_bytes,
            model_root: PathBuf::from(raw.model_root.as_deref().unwrap_or(DEFAULT_MODEL_ROOT)),
            predict_endpoint: endpoint_path(
                "MODEL_DEPLOY_PREDICT_ENDPOINT",
                raw.predict_endpoint.as_deref().unwrap_or("/v1/completions"),
            )?,
            health_endpoint: endpoint_path(
                "MODEL_DEPLOY_HEALTH_ENDPOINT",
                raw.health_endpoint.as_deref().unwrap_or("/health"),
            )?,
            health_interval: seconds(
                "MODELMUX_HEALTH_INTERVAL",
                raw.health_interval.as_deref(),
                10.0,
                0.05,
            )?,
            health_timeout: seconds(
                "MODELMUX_HEALTH_TIMEOUT",
                raw.health_timeout.as_deref(),
                10.0,
                0.05,
            )?,
            restart_delay: seconds(
                "MODELMUX_RESTART_DELAY",
                raw.restart_delay.as_deref(),
                1.0,
                0.0,
            )?,
            host: match raw.host.as_deref() {
                Some(v) => parse_host(v)?,
                None => IpAddr::from([0, 0, 0, 0]),
            },
            header_timeout: seconds(
                "MODELMUX_HEADER_TIMEOUT",
                raw.header_timeout.as_deref(),
                30.0,
                0.1,
            )?,
            idle_timeout: seconds(
                "MODELMUX_IDLE_TIMEOUT",
                raw.idle_timeout.as_deref(),
                120.0,
                0.1,
            )?,
            max_connections: match &raw.max_connections {
                Some(v) => match integer::<usize>("MODELMUX_MAX_CONNECTIONS", v, "not a count")? {
                    0 => {
                        return Err(ConfigError::var(
                            "MODELMUX_MAX_CONNECTIONS",
                            v,
                            "must be above 0",
                        ));
                    }
                    n => n,
                },
                None => 10_000,
            },
            queue_timeout: seconds(
                "MODELMUX_QUEUE_TIMEOUT",
                raw.queue_timeout.as_deref(),
                60.0,
                0.0,
            )?,
            sse_keepalive: Some(seconds(
                "MODELMUX_SSE_KEEPALIVE",
                raw.sse_keepalive.as_deref(),
                15.0,
                0.0,
            )?)
            .filter(|d| !d.is_zero()),
            body_timeout: seconds(
                "MODELMUX_BODY_TIMEOUT",
                raw.body_timeout.as_deref(),
                30.0,
                0.1,
            )?,
            send_timeout: seconds(
                "MODELMUX_SEND_TIMEOUT",
                raw.send_timeout.as_deref(),
                60.0,
                0.1,
            )?,
            engine_base_port,
            stall_timeout: Some(seconds(
                "MODELMUX_STALL_TIMEOUT",
                raw.stall_timeout.as_deref(),
                120.0,
                0.0,
            )?)
            .filter(|t| !t.is_zero()),
            progress_interval: seconds(
                "MODELMUX_PROGRESS_INTERVAL",
                raw.progress_interval.as_deref(),
                10.0,
                0.05,
            )?,
            gpu_memory_limit: fraction(
                "MODELMUX_GPU_MEMORY_LIMIT",
                raw.gpu_memory_limit.as_deref(),
                DEFAULT_GPU_MEMORY_LIMIT,
            )?,
        })
    }
}

/// A key from `var`: surrounding whitespace dropped (a Kubernetes secret made from a file
/// ends in a newline), then it must be one or more visible ASCII characters, which is all a
/// client's `Authorization: Bearer` header can carry: a key no client could send would lock
/// everyone out without a word. `off` says how to do without one. The value is never
/// echoed.
fn key(var: &'static str, value: &str, off: &str) -> Result<String, ConfigError> {
    let k = value.trim();
    if k.is_empty() {
        return Err(ConfigError::var(
            var,
            "",
            format!("is empty; {off} or give a key"),
        ));
    }
    if !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::var(
            var,
            "(hidden)",
            "holds a space, a control character or a non-ASCII character, which a client's `Authorization: Bearer` header cannot carry; use visible ASCII characters only",
        ));
    }
    Ok(k.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(f: impl FnOnce(&mut RawConfig)) -> String {
        let mut raw = RawConfig::default();
        f(&mut raw);
        Settings::from_raw(&raw).unwrap_err().to_string()
    }

    #[test]
    fn keys_lose_a_secret_files_newline_and_must_be_sendable() {
        let raw = RawConfig {
            api_key: Some("s3cret\n".into()),
            admin_key: Some("  adm1n\t".into()),
            ..RawConfig::default()
        };
        let s = Settings::from_raw(&raw).unwrap();
        assert_eq!(s.api_key.as_deref(), Some("s3cret"));
        assert_eq!(s.admin_key.as_deref(), Some("adm1n"));
        for bad in ["two words", "caf\u{e9}", "a\u{7}b"] {
            let e = err(|r| r.api_key = Some(bad.into()));
            assert!(
                e.contains("MODELMUX_API_KEY") && e.contains("visible ASCII"),
                "{e}"
            );
            assert!(!e.contains(bad), "the key is never echoed: {e}");
        }
        let e = err(|r| r.admin_key = Some(" \n".into()));
        assert!(
            e.contains("MODELMUX_ADMIN_KEY") && e.contains("is empty"),
            "{e}"
        );
        let e = err(|r| {
            r.api_key = Some("same".into());
            r.admin_key = Some("same\n".into());
        });
        assert!(e.contains("key of its own"), "{e}");
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = Settings::from_raw(&RawConfig::default()).unwrap();
        assert_eq!((s.port, s.health_port), (8080, 8080));
        assert_eq!(s.engine, Engine::Vllm);
        assert_eq!(s.engine_cmd, None);
        assert_eq!(
            Engine::Vllm.profile().default_cmd.join(" "),
            DEFAULT_ENGINE_CMD
        );
        assert_eq!(s.startup_timeout, Duration::from_secs(1800));
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.max_restarts, 5);
        assert_eq!(s.on_failure, OnFailure::Exit);
        assert_eq!(s.max_body_bytes, 33554432);
        assert_eq!(s.model_root, PathBuf::from("/opt/ds/model/deployed_model"));
        assert_eq!(s.predict_endpoint, "/v1/completions");
        assert_eq!(s.health_endpoint, "/health");
        assert_eq!(s.host, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(s.header_timeout, Duration::from_secs(30));
        assert_eq!(s.idle_timeout, Duration::from_secs(120));
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(s.queue_timeout, Duration::from_secs(60));
        assert_eq!(s.sse_keepalive, Some(Duration::from_secs(15)));
        assert_eq!(s.body_timeout, Duration::from_secs(30));
        assert_eq!(s.send_timeout, Duration::from_secs(60));
        assert_eq!(s.engine_base_port, 8081);
        assert_eq!(s.stall_timeout, Some(Duration::from_secs(120)));
        assert_eq!(s.progress_interval, Duration::from_secs(10));
        assert_eq!(s.gpu_memory_limit, 0.92);
    }

    #[test]
    fn front_limits_parse() {
        let raw = RawConfig {
            host: Some("[::1]".into()),
            sse_keepalive: Some("0".into()),
            max_connections: Some("5".into()),
            ..Default::default()
        };
        let s = Settings::from_raw(&raw).unwrap();
        assert_eq!(s.host, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(s.sse_keepalive, None, "0 turns keepalive comments off");
        assert_eq!(s.max_connections, 5);
        assert!(err(|r| r.host = Some("example.com".into())).starts_with("MODELMUX_HOST="));
        assert!(
            err(|r| r.max_connections = Some("0".into())).starts_with("MODELMUX_MAX_CONNECTIONS=")
        );
        assert!(err(|r| r.idle_timeout = Some("-1".into())).starts_with("MODELMUX_IDLE_TIMEOUT="));
        assert!(err(|r| r.queue_timeout = Some("x".into())).starts_with("MODELMUX_QUEUE_TIMEOUT="));
        assert!(err(|r| r.send_timeout = Some("0".into())).starts_with("MODELMUX_SEND_TIMEOUT="));
    }

    #[test]
    fn a_bad_endpoint_is_refused_with_an_example_of_its_kind() {
        assert_eq!(
            err(|r| r.health_endpoint = Some("".into())),
            "MODEL_DEPLOY_HEALTH_ENDPOINT=\"\": not a plain path such as /health"
        );
        assert_eq!(
            err(|r| r.predict_endpoint = Some("http://x/v1".into())),
            "MODEL_DEPLOY_PREDICT_ENDPOINT=\"http://x/v1\": not a plain path such as /v1/completions"
        );
    }

    #[test]
    fn a_stall_timeout_of_zero_turns_the_check_off() {
        let with = |v: &str| {
            let raw = RawConfig {
                stall_timeout: Some(v.into()),
                ..RawConfig::default()
            };
            Settings::from_raw(&raw).map(|s| s.stall_timeout)
        };
        assert_eq!(with("0").unwrap(), None);
        assert_eq!(with("2.5").unwrap(), Some(Duration::from_millis(2500)));
        assert!(
            with("-1")
                .unwrap_err()
                .to_string()
                .starts_with("MODELMUX_STALL_TIMEOUT=\"-1\": not a number of seconds")
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(
            err(|r| r.port = Some("70000".into())),
            "PORT=\"70000\": not a port number; use 1-65535"
        );
        assert_eq!(
            err(|r| r.health_check_port = Some("x".into())),
            "HEALTH_CHECK_PORT=\"x\": not a port number; use 1-65535"
        );
        assert_eq!(
            err(|r| r.on_failure = Some("retry".into())),
            "MODELMUX_ON_FAILURE=\"retry\": use exit or degrade"
        );
        assert_eq!(
            err(|r| r.log_format = Some("xml".into())),
            "MODELMUX_LOG_FORMAT=\"xml\": use text or json"
        );
        assert!(
            err(|r| r.startup_timeout = Some("soon".into()))
                .starts_with("MODELMUX_STARTUP_TIMEOUT=\"soon\": not a number of seconds")
        );
        assert!(err(|r| r.engine_cmd = Some("'vllm".into())).starts_with("MODELMUX_ENGINE_CMD="));
        assert_eq!(
            err(|r| r.engine = Some("ollama".into())),
            "MODELMUX_ENGINE=\"ollama\": unknown engine; use one of vllm, sglang, tgi, \
             llamacpp, llamacpp-python"
        );
        assert!(
            err(|r| r.max_body_bytes = Some("0".into())).starts_with("MODELMUX_MAX_BODY_BYTES=")
        );
        assert!(err(|r| r.gpus = Some("two".into())).starts_with("MODELMUX_GPUS=\"two\""));
        for bad in ["0", "1.5", "-0.2", "half", "NaN"] {
            assert_eq!(
                err(|r| r.gpu_memory_limit = Some(bad.into())),
                format!(
                    "MODELMUX_GPU_MEMORY_LIMIT={bad:?}: must be a fraction above 0 and at most 1, such as 0.92"
                )
            );
        }
        assert!(
            err(|r| r.predict_endpoint = Some("http://evil/x".into()))
                .starts_with("MODEL_DEPLOY_PREDICT_ENDPOINT=")
        );
    }
}
