//! One table of the front's rules, each request sent down both wires (the pass-through
//! wire on a fresh connection, hyper on a connection it was handed), through the real
//! binary and real `mock-vllm` engines. Both answers must agree with each other and with
//! the table, and the access log must show that each wire carried its copy.

mod common;

use std::time::Duration;

use common::Setup;
use common::raw::{Answer, Wire, post};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const KEY: &str = "Authorization: Bearer k3y\r\n";

/// One rule: a request and what the front must answer.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// `error.type` for refusals, `None` for answers from an engine.
    kind: Option<&'static str>,
    /// Headers that must be there with this value (`*`: any value).
    headers: &'static [(&'static str, &'static str)],
    /// For admitted requests: the engine and the path it saw.
    engine: Option<(&'static str, &'static str)>,
    /// The access log line is written for it (not for the front's own paths).
    logged: bool,
}

fn case(name: &'static str, request: Vec<u8>, status: u16, kind: Option<&'static str>) -> Case {
    Case {
        name,
        request,
        status,
        kind,
        headers: &[],
        engine: None,
        logged: true,
    }
}

fn put(path: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    let mut r = post(path, extra_headers, body);
    r.splice(0..4, *b"PUT");
    r
}

fn id_header(name: &str, wire: &str) -> String {
    format!("X-Request-Id: {name}-{wire}\r\n")
}

fn cases(wire: &str) -> Vec<Case> {
    let with = |name: &str, extra: &str| format!("{KEY}{}{extra}", id_header(name, wire));
    let long_name = "m".repeat(3000);
    vec![
        Case {
            engine: Some(("alpha", "/v1/completions")),
            ..case(
                "routed",
                post(
                    "/v1/completions",
                    &with("routed", ""),
                    r#"{"model": "alpha"}"#,
                ),
                200,
                None,
            )
        },
        Case {
            engine: Some(("beta", "/v1/chat/completions?x=1")),
            ..case(
                "query-kept",
                post(
                    "/v1/chat/completions?x=1",
                    &with("query-kept", ""),
                    r#"{"model": "beta", "messages": []}"#,
                ),
                200,
                None,
            )
        },
        Case {
            engine: Some(("alpha", "/v1/completions")),
            ..case(
                "predict-default",
                post(
                    "/predict",
                    &with("predict-default", ""),
                    r#"{"model": "alpha"}"#,
                ),
                200,
                None,
            )
        },
        Case {
            engine: Some(("beta", "/tokenize")),
            ..case(
                "invocations-route",
                post(
                    "/invocations",
                    &with("invocations-route", "route: tokenize\r\n"),
                    r#"{"model": "beta"}"#,
                ),
                200,
                None,
            )
        },
        case(
            "bad-route",
            post(
                "/predict",
                &with("bad-route", "route: http://evil/x\r\n"),
                r#"{"model": "alpha"}"#,
            ),
            400,
            Some("invalid_request_error"),
        ),
        case(
            "two-routes",
            post(
                "/predict",
                &with(
                    "two-routes",
                    "route: /tokenize\r\nroute: /v1/completions\r\n",
                ),
                r#"{"model": "alpha"}"#,
            ),
            400,
            Some("invalid_request_error"),
        ),
        case(
            "two-keys",
            post(
                "/v1/completions",
                &format!(
                    "{}Authorization: Bearer wrong\r\n{KEY}",
                    id_header("two-keys", wire)
                ),
                r#"{"model": "alpha"}"#,
            ),
            400,
            Some("invalid_request_error"),
        ),
        case(
            "two-ids",
            post(
                "/v1/completions",
                &format!("{KEY}X-Request-Id: a\r\nX-Request-Id: b\r\n"),
                r#"{"model": "alpha"}"#,
            ),
            400,
            Some("invalid_request_error"),
        ),
        case(
            "unknown-model",
            post(
                "/v1/completions",
                &with("unknown-model", ""),
                &format!(r#"{{"model": "{long_name}"}}"#),
            ),
            404,
            Some("not_found_error"),
        ),
        case(
            "missing-model",
            post(
                "/v1/completions",
                &with("missing-model", ""),
                r#"{"prompt": "x"}"#,
            ),
            400,
            Some("invalid_request_error"),
        ),
        case(
            "malformed-json",
            post(
                "/v1/completions",
                &with("malformed-json", ""),
                r#"{"model": "#,
            ),
            400,
            Some("invalid_request_error"),
        ),
        // vLLM (pydantic) refuses a body that is not an object; an array is never routed
        // by its first element.
        case(
            "array-body",
            post("/v1/completions", &with("array-body", ""), r#"["alpha"]"#),
            400,
            Some("invalid_request_error"),
        ),
        // Python's json keeps the last of two keys, serde would keep the first: the engine
        // and the front could disagree on the model, so neither wins.
        case(
            "model-twice",
            post(
                "/v1/completions",
                &with("model-twice", ""),
                r#"{"model": "alpha", "model": "beta"}"#,
            ),
            400,
            Some("invalid_request_error"),
        ),
        case(
            "get-inference-path",
            format!(
                "GET /v1/completions HTTP/1.1\r\nHost: f\r\n{}\r\n",
                with("get-inference-path", "")
            )
            .into_bytes(),
            404,
            Some("not_found_error"),
        ),
        Case {
            headers: &[("allow", "POST")],
            ..case(
                "put",
                put("/v1/completions", &with("put", ""), r#"{"model": "alpha"}"#),
                405,
                Some("method_not_allowed"),
            )
        },
        Case {
            headers: &[("allow", "GET, HEAD")],
            ..case(
                "post-health",
                post("/health", &with("post-health", ""), r#"{"model": "alpha"}"#),
                405,
                Some("method_not_allowed"),
            )
        },
        case(
            "control-sleep",
            post(
                "/sleep",
                &with("control-sleep", ""),
                r#"{"model": "alpha"}"#,
            ),
            404,
            Some("not_found_error"),
        ),
        case(
            "control-escaped",
            post(
                "/%63ollective_rpc",
                &with("control-escaped", ""),
                r#"{"model": "alpha"}"#,
            ),
            404,
            Some("not_found_error"),
        ),
        // A `route` may not name what the request line may not.
        case(
            "control-route",
            post(
                "/predict",
                &with("control-route", "route: /sleep\r\n"),
                r#"{"model": "alpha"}"#,
            ),
            404,
            Some("not_found_error"),
        ),
        case(
            "control-route-bare",
            post(
                "/invocations",
                &with("control-route-bare", "route: collective_rpc\r\n"),
                r#"{"model": "alpha"}"#,
            ),
            404,
            Some("not_found_error"),
        ),
        case(
            "control-lora",
            post(
                "/v1/load_lora_adapter",
                &with("control-lora", ""),
                r#"{"model": "alpha"}"#,
            ),
            404,
            Some("not_found_error"),
        ),
        Case {
            headers: &[("www-authenticate", "Bearer"), ("connection", "close")],
            ..case(
                "no-key",
                post(
                    "/v1/completions",
                    &id_header("no-key", wire),
                    r#"{"model": "alpha"}"#,
                ),
                401,
                Some("authentication_error"),
            )
        },
        Case {
            engine: Some(("alpha", "/v1/completions")),
            ..case(
                "key-scheme-any-case",
                post(
                    "/v1/completions",
                    &format!(
                        "authorization: BEARER k3y\r\n{}",
                        id_header("key-scheme-any-case", wire)
                    ),
                    r#"{"model": "alpha"}"#,
                ),
                200,
                None,
            )
        },
        case(
            "too-large",
            post(
                "/v1/completions",
                &with("too-large", ""),
                &format!(r#"{{"model": "alpha", "prompt": "{}"}}"#, "x".repeat(5000)),
            ),
            413,
            Some("request_too_large"),
        ),
        Case {
            headers: &[("retry-after", "5")],
            ..case(
                "loading",
                post(
                    "/v1/completions",
                    &with("loading", ""),
                    r#"{"model": "slow"}"#,
                ),
                503,
                Some("service_unavailable"),
            )
        },
        Case {
            logged: false,
            ..case(
                "ping",
                format!(
                    "GET /ping HTTP/1.1\r\nHost: f\r\n{}\r\n",
                    id_header("ping", wire)
                )
                .into_bytes(),
                503,
                None,
            )
        },
        Case {
            logged: false,
            headers: &[("content-type", "application/json")],
            ..case(
                "status-without-key",
                format!(
                    "GET /status HTTP/1.1\r\nHost: f\r\n{}\r\n",
                    id_header("status-without-key", wire)
                )
                .into_bytes(),
                200,
                None,
            )
        },
        Case {
            logged: false,
            headers: &[("content-type", "text/html; charset=utf-8")],
            ..case(
                "page-for-browsers",
                format!(
                    "GET / HTTP/1.1\r\nHost: f\r\nAccept: text/html,*/*;q=0.8\r\n{}\r\n",
                    id_header("page-for-browsers", wire)
                )
                .into_bytes(),
                200,
                None,
            )
        },
        case(
            "root-for-others",
            format!(
                "GET / HTTP/1.1\r\nHost: f\r\nAccept: application/json\r\n{}\r\n",
                with("root-for-others", "")
            )
            .into_bytes(),
            404,
            Some("not_found_error"),
        ),
        Case {
            engine: Some(("alpha", "/status")),
            ..case(
                "post-status",
                post("/status", &with("post-status", ""), r#"{"model": "alpha"}"#),
                200,
                None,
            )
        },
        Case {
            engine: Some(("beta", "/")),
            ..case(
                "post-root-browser",
                post(
                    "/",
                    &with("post-root-browser", "Accept: text/html\r\n"),
                    r#"{"model": "beta"}"#,
                ),
                200,
                None,
            )
        },
        // No MODELMUX_ADMIN_KEY: /admin/ does not exist, whatever the key.
        case(
            "admin-off",
            post("/admin/reload", &with("admin-off", ""), ""),
            404,
            Some("not_found_error"),
        ),
        case(
            "admin-off-get",
            format!(
                "GET /admin/models HTTP/1.1\r\nHost: f\r\n{}\r\n",
                with("admin-off-get", "")
            )
            .into_bytes(),
            404,
            Some("not_found_error"),
        ),
        Case {
            headers: &[("www-authenticate", "Bearer")],
            ..case(
                "models-without-key",
                format!(
                    "GET /v1/models HTTP/1.1\r\nHost: f\r\n{}\r\n",
                    id_header("models-without-key", wire)
                )
                .into_bytes(),
                401,
                Some("authentication_error"),
            )
        },
    ]
}

const ADMIN_KEY: &str = "Authorization: Bearer adm1n\r\n";

fn get(path: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: f\r\n{extra_headers}\r\n").into_bytes()
}

/// The admin API's rules, with `MODELMUX_ADMIN_KEY` set.
fn admin_cases(wire: &str) -> Vec<Case> {
    let id = |name: &str| id_header(name, wire);
    vec![
        Case {
            // Answered by the admin API on hyper (the pass wire hands it over).
            logged: false,
            headers: &[("content-type", "application/json")],
            ..case(
                "admin-key",
                get("/admin/models", &format!("{ADMIN_KEY}{}", id("admin-key"))),
                200,
                None,
            )
        },
        Case {
            headers: &[("www-authenticate", "Bearer")],
            ..case(
                "admin-with-api-key",
                get(
                    "/admin/models",
                    &format!("{KEY}{}", id("admin-with-api-key")),
                ),
                401,
                Some("authentication_error"),
            )
        },
        case(
            "admin-without-key",
            post("/admin/reload", &id("admin-without-key"), ""),
            401,
            Some("authentication_error"),
        ),
        Case {
            // Answered by the admin API on hyper (the pass wire hands it over).
            logged: false,
            headers: &[("allow", "POST")],
            ..case(
                "admin-wrong-method",
                get(
                    "/admin/reload",
                    &format!("{ADMIN_KEY}{}", id("admin-wrong-method")),
                ),
                405,
                Some("method_not_allowed"),
            )
        },
        Case {
            logged: false,
            ..case(
                "admin-unknown-model",
                post(
                    "/admin/models/nope/restart",
                    &format!("{ADMIN_KEY}{}", id("admin-unknown-model")),
                    "",
                ),
                404,
                Some("not_found_error"),
            )
        },
        // The admin key is not the API key either.
        case(
            "inference-with-admin-key",
            post(
                "/v1/completions",
                &format!("{ADMIN_KEY}{}", id("inference-with-admin-key")),
                r#"{"model": "alpha"}"#,
            ),
            401,
            Some("authentication_error"),
        ),
        Case {
            engine: Some(("alpha", "/v1/completions")),
            ..case(
                "inference-with-api-key",
                post(
                    "/v1/completions",
                    &format!("{KEY}{}", id("inference-with-api-key")),
                    r#"{"model": "alpha"}"#,
                ),
                200,
                None,
            )
        },
    ]
}

/// The parts of an answer both wires must agree on (the body too when `body`).
fn essence(a: &Answer, body: bool) -> (u16, Value, Vec<(String, String)>) {
    let body: Value = match body {
        true => serde_json::from_slice(&a.body).unwrap_or(Value::Null),
        false => Value::Null,
    };
    let mut headers: Vec<(String, String)> = a
        .headers
        .iter()
        .filter(|(n, _)| {
            matches!(
                n.as_str(),
                "content-type"
                    | "retry-after"
                    | "allow"
                    | "www-authenticate"
                    | "x-mock-path"
                    | "x-mock-served-by"
            )
        })
        .cloned()
        .collect();
    headers.sort();
    (a.status, body, headers)
}

fn ask(port: u16, general: bool, request: &[u8]) -> Answer {
    let mut w = if general {
        Wire::connect_general(port)
    } else {
        Wire::connect(port)
    };
    w.send(request);
    w.answer()
}

#[test]
fn every_rule_answers_the_same_on_both_wires() {
    let m = Setup::new(&[
        ("alpha", json!({})),
        ("beta", json!({})),
        ("slow", json!({"env": {"MOCK_STARTUP_DELAY_MS": "600000"}})),
    ])
    .env("MODELMUX_API_KEY", "k3y")
    .env("MODELMUX_MAX_BODY_BYTES", "4096")
    .start();
    common::wait_until(T, "alpha and beta ready", || {
        let log = m.log();
        log.contains("model=alpha")
            && log.contains("model=beta")
            && log.matches("ready after").count() >= 2
    });
    check(&m, cases("pass"), cases("general"));
}

#[test]
fn the_admin_api_answers_the_same_on_both_wires() {
    let m = Setup::new(&[("alpha", json!({}))])
        .env("MODELMUX_API_KEY", "k3y")
        .env("MODELMUX_ADMIN_KEY", "adm1n")
        .start();
    m.wait_ready(T);
    check(&m, admin_cases("pass"), admin_cases("general"));
}

/// Sends each case down both wires and compares the answers with each other and the table.
fn check(m: &common::Modelmux, pass_cases: Vec<Case>, general_cases: Vec<Case>) {
    for (pass, general) in pass_cases.into_iter().zip(general_cases) {
        let a = ask(m.port, false, &pass.request);
        let b = ask(m.port, true, &general.request);
        let name = pass.name;
        assert_eq!(a.status, pass.status, "{name} (pass): {}", a.text());
        let same_body = pass.kind.is_some() || pass.engine.is_some();
        assert_eq!(
            essence(&a, same_body),
            essence(&b, same_body),
            "{name}: the wires disagree"
        );
        let id_a = a
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{name}: no X-Request-Id"));
        let id_b = b
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{name}: no X-Request-Id"));
        if let Some(kind) = pass.kind {
            let e = &serde_json::from_slice::<Value>(&a.body).unwrap()["error"];
            assert_eq!(e["type"], kind, "{name}");
            assert_eq!(e["code"], pass.status, "{name}");
            assert!(e["message"].as_str().unwrap().len() < 1000, "{name}: {e}");
        }
        for (h, v) in pass.headers {
            let got = a.header(h).unwrap_or_else(|| panic!("{name}: no {h}"));
            assert!(*v == "*" || got == *v, "{name}: {h}: {got}");
            let got = b
                .header(h)
                .unwrap_or_else(|| panic!("{name} (general): no {h}"));
            assert!(*v == "*" || got == *v, "{name} (general): {h}: {got}");
        }
        if let Some((engine, path)) = pass.engine {
            assert_eq!(a.header("x-mock-served-by"), Some(engine), "{name}");
            assert_eq!(a.header("x-mock-path"), Some(path), "{name}");
            assert_eq!(a.header("x-mock-request-id"), Some(id_a), "{name}");
        }
        if name != "two-ids" {
            assert_eq!(id_a, format!("{name}-pass"), "{name}");
            assert_eq!(id_b, format!("{name}-general"), "{name}");
        }
        if pass.logged && name != "two-ids" {
            common::wait_until(Duration::from_secs(5), "access lines of both wires", || {
                let log = m.log();
                log.contains(&format!("request_id={id_a} wire=pass"))
                    && log.contains(&format!("request_id={id_b} wire=general"))
            });
        }
    }
}
