//! The command lines of the servers modelmux has profiles for, so that the fast tier can
//! check every profile's mapping on the mock. `--mock-dialect NAME` (or `MOCK_DIALECT`)
//! picks one: `vllm` (the default; unknown flags are ignored, as the mock always did),
//! `sglang`, `tgi`, `llamacpp`, `llamacpp-python` (unknown flags are a usage error, exit 2,
//! in the server's own words). Each dialect also answers like its server where modelmux
//! depends on it: the health path (llama-cpp-python has none), what `/v1/models` lists, the
//! metrics endpoint and prefix, llama-cpp-python binding `$HOST:$PORT` over its flags and
//! refusing an `X-Request-Id` that is not a UUID.

use serde_json::{Value, json};

/// Which server the mock plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Vllm,
    Sglang,
    Tgi,
    Llamacpp,
    LlamacppPython,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    Zero,
    One,
    Many,
}

use Arity::{Many, One, Zero};

/// (spellings, arity, canonical key) of each flag a strict dialect accepts.
type Spec = &'static [(&'static [&'static str], Arity, &'static str)];

// What modelmux writes plus the flags the tests use, spelled as each server's source does.
const SGLANG: Spec = &[
    (&["--model-path", "--model"], One, "model"),
    (&["--host"], One, "host"),
    (&["--port"], One, "port"),
    (&["--served-model-name"], One, "name"),
    (&["--tp-size", "--tensor-parallel-size"], One, "tp"),
    (&["--pp-size", "--pipeline-parallel-size"], One, "pp"),
    (&["--dp-size", "--data-parallel-size"], One, "dp"),
    (&["--enable-dp-attention"], Zero, ""),
    (&["--enable-lora"], Zero, ""),
    (&["--lora-paths"], Many, "lora"),
    (&["--mem-fraction-static"], One, ""),
    (&["--context-length"], One, ""),
    (&["--enable-metrics"], Zero, "metrics"),
    (&["--device"], One, ""),
    (&["--trust-remote-code"], Zero, ""),
];
const TGI: Spec = &[
    (&["--model-id"], One, "model"),
    (&["--hostname"], One, "host"),
    (&["--port", "-p"], One, "port"),
    (&["--prometheus-port"], One, "prometheus"),
    (&["--shard-uds-path"], One, ""),
    (&["--master-port"], One, ""),
    (&["--num-shard"], One, "tp"),
    (&["--sharded"], One, ""),
    (&["--lora-adapters"], One, "lora"),
    (&["--cuda-memory-fraction"], One, ""),
    (&["--max-total-tokens"], One, ""),
    (&["--max-input-tokens"], One, ""),
    (&["--json-output"], Zero, ""),
    (&["--api-key"], One, "api_key"),
];
const LLAMACPP: Spec = &[
    (&["-m", "--model"], One, "model"),
    (&["--host"], One, "host"),
    (&["--port"], One, "port"),
    (&["-a", "--alias"], One, "name"),
    (&["-ngl", "--gpu-layers", "--n-gpu-layers"], One, ""),
    (&["-c", "--ctx-size"], One, ""),
    (&["--lora"], One, ""),
    (&["-ts", "--tensor-split"], One, ""),
    (&["-dev", "--device"], One, ""),
    (&["--metrics"], Zero, "metrics"),
    (&["-fa", "--flash-attn"], One, ""),
    (&["-np", "--parallel"], One, ""),
    (&["-t", "--threads"], One, "threads"),
    (&["-C", "--cpu-mask"], One, "cpu_mask"),
    (&["-Cr", "--cpu-range"], One, ""),
    (&["--api-key"], One, "api_key"),
    (&["--api-key-file"], One, "api_key_file"),
];
const LLAMACPP_PYTHON: Spec = &[
    (&["--model"], One, "model"),
    (&["--host"], One, "host"),
    (&["--port"], One, "port"),
    (&["--model_alias"], One, "name"),
    (&["--n_gpu_layers"], One, ""),
    (&["--n_ctx"], One, ""),
    (&["--lora_path"], One, ""),
    (&["--tensor_split"], Many, ""),
    (&["--chat_format"], One, ""),
    (&["--verbose"], One, ""),
];

/// What the mock learnt from its command line.
#[derive(Debug, Clone)]
pub struct Cli {
    pub dialect: Dialect,
    pub model: String,
    /// Names the server answers to (for `/v1/models` and the request check).
    pub names: Vec<String>,
    /// Adapters: name and path (the path as given; empty where the server names none).
    pub loras: Vec<(String, String)>,
    pub host: String,
    pub port: String,
    /// Whether `/metrics` is served.
    pub metrics: bool,
    /// llama.cpp's `--cpu-mask` and `--threads`, as given (for the report file).
    pub cpu_mask: Option<String>,
    pub threads: Option<String>,
    /// vLLM's `--api-key` values and `VLLM_API_KEY` (TGI: `--api-key` or `API_KEY`;
    /// llama.cpp: its list and key file): generation requests need one of them as
    /// `Authorization: Bearer KEY` (vLLM's `AuthenticationMiddleware`, TGI's router).
    pub api_keys: Vec<String>,
}

impl Dialect {
    fn from_name(name: &str) -> Option<Dialect> {
        Some(match name {
            "vllm" => Dialect::Vllm,
            "sglang" => Dialect::Sglang,
            "tgi" => Dialect::Tgi,
            "llamacpp" => Dialect::Llamacpp,
            "llamacpp-python" => Dialect::LlamacppPython,
            _ => return None,
        })
    }

    /// The server's name, as modelmux's profiles spell it.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Vllm => "vllm",
            Dialect::Sglang => "sglang",
            Dialect::Tgi => "tgi",
            Dialect::Llamacpp => "llamacpp",
            Dialect::LlamacppPython => "llamacpp-python",
        }
    }

    /// The health path, if the server has one.
    pub fn health_path(self) -> Option<&'static str> {
        match self {
            Dialect::LlamacppPython => None,
            _ => Some("/health"),
        }
    }

    /// The prefix of the server's metric series.
    pub fn metrics_prefix(self) -> &'static str {
        match self {
            Dialect::Vllm => "vllm:",
            Dialect::Sglang => "sglang:",
            Dialect::Tgi => "tgi_",
            Dialect::Llamacpp | Dialect::LlamacppPython => "llamacpp:",
        }
    }

    /// The mock's vLLM metrics text as this server names its series: the running-batch
    /// gauge and the counters modelmux reads for hung-engine detection under the server's
    /// own names (SGLang `sglang:num_running_reqs`, TGI `tgi_batch_current_size` and
    /// `tgi_batch_inference_success` per step, llama.cpp `llamacpp:requests_processing` and
    /// `llamacpp:n_decode_total`), the rest under the server's prefix.
    pub fn rename_metrics(self, text: &str) -> String {
        let names: &[(&str, &str)] = match self {
            Dialect::Vllm => return text.to_string(),
            Dialect::Sglang => &[
                ("vllm:num_requests_running", "sglang:num_running_reqs"),
                ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
                ("vllm:request_success_total", "sglang:num_requests_total"),
            ],
            Dialect::Tgi => &[
                ("vllm:num_requests_running", "tgi_batch_current_size"),
                ("vllm:num_requests_waiting", "tgi_queue_size"),
                (
                    "vllm:generation_tokens_total",
                    "tgi_batch_inference_success",
                ),
                ("vllm:request_success_total", "tgi_request_success"),
            ],
            Dialect::Llamacpp | Dialect::LlamacppPython => &[
                ("vllm:num_requests_running", "llamacpp:requests_processing"),
                ("vllm:num_requests_waiting", "llamacpp:requests_deferred"),
                ("vllm:generation_tokens_total", "llamacpp:n_decode_total"),
            ],
        };
        let mut out = text.to_string();
        for (from, to) in names {
            // Whole names only: `vllm:num_requests_running` is not a prefix of another.
            out = out
                .replace(&format!("{from} "), &format!("{to} "))
                .replace(&format!("{from}{{"), &format!("{to}{{"));
        }
        out.replace("vllm:", self.metrics_prefix())
    }

    /// Whether `authorization` opens a server started with `api_keys` (none: always), as
    /// vLLM checks it: scheme `Bearer` in any case, then the key.
    pub fn authorized(api_keys: &[String], authorization: Option<&[u8]>) -> bool {
        if api_keys.is_empty() {
            return true;
        }
        let Some(value) = authorization.and_then(|v| std::str::from_utf8(v).ok()) else {
            return false;
        };
        let (scheme, key) = value.split_once(' ').unwrap_or((value, ""));
        scheme.eq_ignore_ascii_case("bearer") && api_keys.iter().any(|k| k == key)
    }

    /// Whether a request's `"model"` must be a served name or adapter (vLLM 404s on
    /// others). TGI reads any other value as an adapter id and llama.cpp ignores it: the
    /// mock takes anything there and reports what the server would do.
    pub fn checks_model(self) -> bool {
        matches!(self, Dialect::Vllm | Dialect::Sglang)
    }
}

/// Takes `--mock-dialect NAME` out of the arguments, else reads `MOCK_DIALECT`.
pub fn take_dialect(args: &mut Vec<String>) -> Result<Dialect, String> {
    let mut name = std::env::var("MOCK_DIALECT").ok();
    if let Some(i) = args.iter().position(|a| a == "--mock-dialect") {
        if i + 1 >= args.len() {
            return Err("--mock-dialect needs a name".into());
        }
        name = Some(args.remove(i + 1));
        args.remove(i);
    }
    match name {
        None => Ok(Dialect::Vllm),
        Some(n) => Dialect::from_name(&n).ok_or(format!("unknown --mock-dialect {n:?}")),
    }
}

fn is_flag(token: &str) -> bool {
    token.starts_with('-')
        && token.len() > 1
        && !token[1..].starts_with(|c: char| c.is_ascii_digit() || c == '.')
}

/// Values of a flag the permissive vLLM way: `--flag a b` (until the next `--`) or
/// `--flag=a`.
fn vllm_values(args: &[String], flags: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some(v) = flags.iter().find_map(|f| a.strip_prefix(&format!("{f}="))) {
            out.push(v.to_string());
        } else if flags.contains(&a.as_str()) {
            i += 1;
            while i < args.len() && !args[i].starts_with("--") {
                out.push(args[i].clone());
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    out
}

/// The server's usage error for an unknown flag.
fn unknown(d: Dialect, flag: &str) -> String {
    match d {
        Dialect::Tgi => format!(
            "error: unexpected argument '{flag}' found\n\nUsage: text-generation-launcher [OPTIONS]"
        ),
        Dialect::Llamacpp => format!("error: invalid argument: {flag}"),
        _ => format!("error: unrecognized arguments: {flag}"),
    }
}

/// Reads a strict dialect's command line into (key, values) pairs.
fn strict(
    d: Dialect,
    spec: Spec,
    args: &[String],
) -> Result<Vec<(&'static str, Vec<String>)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let token = &args[i];
        if !is_flag(token) {
            return Err(unknown(d, token));
        }
        let (flag, inline) = match token.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (token.as_str(), None),
        };
        let Some((_, arity, key)) = spec.iter().find(|(names, ..)| names.contains(&flag)) else {
            return Err(unknown(d, flag));
        };
        i += 1;
        let mut values: Vec<String> = inline.into_iter().collect();
        match arity {
            Zero => {}
            One if values.is_empty() => {
                if i >= args.len() {
                    return Err(format!("error: argument {flag}: expected one argument"));
                }
                values.push(args[i].clone());
                i += 1;
            }
            One => {}
            Many => {
                while i < args.len() && !is_flag(&args[i]) {
                    values.push(args[i].clone());
                    i += 1;
                }
            }
        }
        out.push((*key, values));
    }
    Ok(out)
}

/// Parses the command line as `d`'s server would. `Err` is its usage error (exit 2).
pub fn parse(d: Dialect, args: &[String]) -> Result<Cli, String> {
    if d == Dialect::Vllm {
        // `vllm serve MODEL ...` takes the model right after `serve`; the API server module
        // takes `--model`.
        let positional = (args.first().map(String::as_str) == Some("serve"))
            .then(|| args.get(1).filter(|a| !a.starts_with('-')).cloned())
            .flatten();
        let model = positional
            .or_else(|| vllm_values(args, &["--model"]).pop())
            .unwrap_or_else(|| "mock".into());
        let mut names = vllm_values(args, &["--served-model-name"]);
        if names.is_empty() {
            names.push(model.clone());
        }
        let loras = vllm_values(args, &["--lora-modules"])
            .into_iter()
            .filter_map(|v| {
                v.split_once('=')
                    .map(|(n, p)| (n.to_string(), p.to_string()))
            })
            .collect();
        return Ok(Cli {
            dialect: d,
            model,
            names,
            loras,
            host: vllm_values(args, &["--host"])
                .pop()
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: vllm_values(args, &["--port"])
                .pop()
                .unwrap_or_else(|| "8000".into()),
            metrics: true,
            cpu_mask: None,
            threads: None,
            api_keys: vllm_values(args, &["--api-key"])
                .into_iter()
                .chain(std::env::var("VLLM_API_KEY").ok())
                .collect(),
        });
    }
    let spec = match d {
        Dialect::Sglang => SGLANG,
        Dialect::Tgi => TGI,
        Dialect::Llamacpp => LLAMACPP,
        _ => LLAMACPP_PYTHON,
    };
    let pairs = strict(d, spec, args)?;
    let last = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.first().cloned())
    };
    let model = last("model").ok_or_else(|| match d {
        Dialect::Tgi => "error: --model-id is required by this mock".to_string(),
        _ => "error: the model path is required".to_string(),
    })?;
    let mut names: Vec<String> = match last("name") {
        Some(n) if d == Dialect::Llamacpp => n.split(',').map(|s| s.trim().to_string()).collect(),
        Some(n) => vec![n],
        None => vec![],
    };
    if names.is_empty() {
        // What each server reports when given no name: SGLang and llama-cpp-python the path,
        // TGI the model id, llama.cpp the file name.
        names.push(match d {
            Dialect::Llamacpp => model.rsplit('/').next().unwrap_or(&model).to_string(),
            _ => model.clone(),
        });
    }
    let loras = pairs
        .iter()
        .filter(|(k, _)| *k == "lora")
        .flat_map(|(_, v)| v.iter().flat_map(|s| s.split(',')))
        .map(|v| {
            let name = v.split(['=', '@']).next().unwrap_or(v).to_string();
            let path = v.split_once('=').map_or("", |(_, p)| p).to_string();
            (name, path)
        })
        .collect();
    // llama-cpp-python's __main__ binds $HOST/$PORT over its flags.
    let from_env = |var: &str| {
        (d == Dialect::LlamacppPython)
            .then(|| std::env::var(var).ok())
            .flatten()
    };
    Ok(Cli {
        dialect: d,
        model,
        names,
        loras,
        host: from_env("HOST")
            .or_else(|| last("host"))
            .unwrap_or_else(|| "127.0.0.1".into()),
        port: from_env("PORT")
            .or_else(|| last("port"))
            .unwrap_or_else(|| "8000".into()),
        metrics: match d {
            Dialect::Tgi => true,
            Dialect::LlamacppPython => false,
            _ => pairs.iter().any(|(k, _)| *k == "metrics"),
        },
        cpu_mask: last("cpu_mask"),
        threads: last("threads"),
        // TGI's launcher takes `--api-key` or `API_KEY` and its router checks it.
        api_keys: match d {
            Dialect::Tgi => last("api_key")
                .or_else(|| std::env::var("API_KEY").ok())
                .into_iter()
                .collect(),
            Dialect::Llamacpp => llamacpp_keys(
                last("api_key").or_else(|| std::env::var("LLAMA_API_KEY").ok()),
                last("api_key_file").or_else(|| std::env::var("LLAMA_ARG_API_KEY_FILE").ok()),
            )?,
            _ => Vec::new(),
        },
    })
}

/// llama-server's keys: `--api-key` (or `LLAMA_API_KEY`) is a comma list, and every line of
/// `--api-key-file` (or `LLAMA_ARG_API_KEY_FILE`) that is neither empty nor starts with `#`
/// is one more key (llama.cpp's `common/arg.cpp`); a file it cannot open stops it.
fn llamacpp_keys(list: Option<String>, file: Option<String>) -> Result<Vec<String>, String> {
    let mut keys: Vec<String> = list
        .iter()
        .flat_map(|l| l.split(','))
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path)
            .map_err(|_| format!("error: failed to open file '{path}'"))?;
        keys.extend(
            text.lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    Ok(keys)
}

/// The server's `GET /v1/models` list, with the fields each server adds to its entries
/// (vLLM: `root`, `parent`, `max_model_len`, `permission`; SGLang: `root`, `max_model_len`;
/// llama.cpp: its `aliases` and `meta`), so that the front's list can be checked to keep them.
pub fn models(cli: &Cli, created: u64, max_model_len: u64) -> Value {
    let owned_by = match cli.dialect {
        Dialect::Vllm => "vllm".to_string(),
        Dialect::Tgi => cli.model.clone(),
        Dialect::Sglang => "sglang".to_string(),
        Dialect::Llamacpp => "llamacpp".to_string(),
        Dialect::LlamacppPython => "me".to_string(),
    };
    let entry =
        |id: &str| json!({"id": id, "object": "model", "created": created, "owned_by": owned_by});
    let data: Vec<Value> = match cli.dialect {
        Dialect::Vllm => {
            let vllm = |id: &str, root: &str, parent: Option<&str>| {
                let mut e = entry(id);
                e["root"] = json!(root);
                e["parent"] = json!(parent);
                e["max_model_len"] = json!(max_model_len);
                e["permission"] = json!([{"id": format!("modelperm-{id}"),
                    "object": "model_permission", "allow_sampling": true, "allow_view": true}]);
                e
            };
            cli.names
                .iter()
                .map(|n| vllm(n, &cli.model, None))
                .chain(
                    cli.loras
                        .iter()
                        .map(|(n, p)| vllm(n, p, Some(&cli.names[0]))),
                )
                .collect()
        }
        // TGI lists its model id, never a served name.
        Dialect::Tgi => vec![entry(&cli.model)],
        Dialect::Llamacpp => {
            let mut e = entry(&cli.names[0]);
            e["aliases"] = json!(cli.names);
            e["meta"] = json!({"n_ctx_train": max_model_len, "vocab_type": 2});
            vec![e]
        }
        Dialect::Sglang => std::iter::once(&cli.names[0])
            .chain(cli.loras.iter().map(|(n, _)| n))
            .map(|n| {
                let mut e = entry(n);
                e["root"] = json!(cli.model);
                e["max_model_len"] = json!(max_model_len);
                e
            })
            .collect(),
        Dialect::LlamacppPython => std::iter::once(&cli.names[0])
            .chain(cli.loras.iter().map(|(n, _)| n))
            .map(|n| entry(n))
            .collect(),
    };
    json!({"object": "list", "data": data})
}

/// The adapter id the server would apply to a request naming `model` (TGI: any model
/// other than `tgi`), for the `x-mock-adapter-id` response header.
pub fn adapter_for<'a>(cli: &Cli, model: Option<&'a str>) -> Option<&'a str> {
    match (cli.dialect, model) {
        (Dialect::Tgi, Some(m)) if m != "tgi" => Some(m),
        (_, Some(m)) if cli.loras.iter().any(|(l, _)| l == m) => Some(m),
        _ => None,
    }
}

/// llama-cpp-python answers 400 with an empty body to an `X-Request-Id` that is not a UUID
/// (starlette-context's `RequestIdPlugin` validates it); the others take anything.
pub fn request_id_refused(cli: &Cli, id: Option<&[u8]>) -> bool {
    let Some(id) = id else { return false };
    if cli.dialect != Dialect::LlamacppPython {
        return false;
    }
    // What Python's uuid.UUID() accepts: 32 hex digits, dashes and braces aside.
    let hex: Vec<u8> = id
        .iter()
        .copied()
        .filter(|c| !matches!(c, b'-' | b'{' | b'}'))
        .collect();
    !(hex.len() == 32 && hex.iter().all(u8::is_ascii_hexdigit))
}
