//! The admin API through the real binary and mock-vllm (SPEC §8): keys, restart / stop /
//! start of one model, run-time LoRA adapters, reload (start, stop, restart, unchanged;
//! invalid or too big: 400 and nothing changes) and SIGHUP.

mod common;

use std::time::Duration;

use common::runtime::{
    ADMIN_KEY, adapter_dir, admin, complete, health, metric, model, state_becomes, wait_for,
};
use common::{Modelmux, Setup, client, run_async};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const TEST: Duration = Duration::from_secs(120);

fn entry(name: &str, extra: Value) -> Value {
    let mut m = json!({"model_path": format!("org/{name}"), "params": format!("--served-model-name {name}")});
    if let Value::Object(fields) = extra {
        for (k, v) in fields {
            m[k] = v;
        }
    }
    m
}

/// modelmux with `--config FILE` (written from `models`), the admin key and a wait until
/// every model counts as ready.
fn start_with_file(models: &[Value], env: &[(&str, &str)]) -> (Modelmux, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("models.json");
    std::fs::write(&path, json!({"models": models}).to_string()).unwrap();
    let mut setup = Setup::new(&[]).env("MODELMUX_ADMIN_KEY", ADMIN_KEY);
    for (k, v) in env {
        setup = setup.env(k, v);
    }
    setup.args = vec!["--config".into(), path.to_string_lossy().into_owned()];
    let m = setup.start();
    m.wait_ready(T);
    (m, files)
}

fn write_config(files: &tempfile::TempDir, models: &[Value]) {
    let path = files.path().join("models.json");
    std::fs::write(path, json!({"models": models}).to_string()).unwrap();
}

fn pid(m: &Modelmux, name: &str) -> Option<u64> {
    model(m, name)["pid"].as_u64()
}

#[test]
fn the_admin_api_has_its_own_key_and_is_404_without_one() {
    run_async(TEST, async {
        let c = client();
        // No admin key: every /admin/ path is 404, whatever the key sent.
        let m = Setup::new(&[("a", json!({}))])
            .env("MODELMUX_API_KEY", "api-key")
            .start();
        m.wait_ready(T);
        for (method, path) in [
            ("GET", "/admin/models"),
            ("POST", "/admin/reload"),
            ("POST", "/admin/models/a/stop"),
        ] {
            let r = common::request(
                &c,
                method,
                &m.url(path),
                &[("authorization", "Bearer api-key")],
                "",
            )
            .await;
            assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        }
        drop(m);
        // With one: the API key does not open it, the admin key does.
        let m = Setup::new(&[("a", json!({}))])
            .env("MODELMUX_API_KEY", "api-key")
            .env("MODELMUX_ADMIN_KEY", ADMIN_KEY)
            .start();
        m.wait_ready(T);
        let r = common::request(
            &c,
            "GET",
            &m.url("/admin/models"),
            &[("authorization", "Bearer api-key")],
            "",
        )
        .await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        let r = common::request(&c, "GET", &m.url("/admin/models"), &[], "").await;
        assert_eq!(r.status, 401);
        let r = admin(&c, &m, "GET", "/admin/models", "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let a = &r.json()["models"][0];
        assert_eq!(
            (a["name"].as_str(), a["state"].as_str(), a["load"].as_str()),
            (Some("a"), Some("ready"), Some("always"))
        );
        assert!(
            a["pid"].as_u64().is_some() && a["port"].as_u64().is_some(),
            "{a}"
        );
        // The admin API is not a way around the API key of inference routes either.
        let r = common::request(
            &c,
            "POST",
            &m.url("/v1/completions"),
            &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
            r#"{"model":"a"}"#,
        )
        .await;
        assert_eq!(r.status, 401);
        let r = admin(&c, &m, "GET", "/admin/reload", "").await;
        assert_eq!(
            (
                r.status,
                r.headers.get("allow").map(|v| v.to_str().unwrap())
            ),
            (405, Some("POST"))
        );
        let r = admin(&c, &m, "POST", "/admin/models/nope/restart", "").await;
        assert_eq!(r.status, 404);
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("models: a"),
            "{}",
            r.body
        );
    });
}

#[test]
fn an_admin_key_equal_to_the_api_key_is_refused_before_anything_starts() {
    let out = common::run_clean(
        &["serve"],
        &[
            ("MODEL", "org/x"),
            ("MODELMUX_API_KEY", "same"),
            ("MODELMUX_ADMIN_KEY", "same"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MODELMUX_ADMIN_KEY") && err.contains("key of its own"),
        "{err}"
    );
}

#[test]
fn restart_stop_and_start_touch_one_model_only() {
    run_async(TEST, async {
        let c = client();
        let (m, _files) = start_with_file(&[entry("a", json!({})), entry("b", json!({}))], &[]);
        let (a0, b0) = (pid(&m, "a").unwrap(), pid(&m, "b").unwrap());

        let r = admin(&c, &m, "POST", "/admin/models/a/restart", "").await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(
            r.json(),
            json!({"model": "a", "action": "restart", "state": "ready"})
        );
        wait_for(T, "a restarted", || {
            pid(&m, "a").is_some_and(|p| p != a0) && model(&m, "a")["state"] == "ready"
        })
        .await;
        assert_eq!(pid(&m, "b"), Some(b0), "b untouched");
        assert!(!common::alive(a0 as u32), "the old engine is gone");
        assert_eq!(
            model(&m, "a")["restarts"],
            0,
            "an operator's restart is not a failure"
        );

        let r = admin(&c, &m, "POST", "/admin/models/a/stop", "").await;
        assert_eq!(r.status, 202);
        let a = state_becomes(&m, "a", "stopped", T).await;
        assert_eq!(a["pid"], Value::Null);
        let r = complete(&c, &m, "a").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.headers.contains_key("retry-after"));
        assert_eq!(complete(&c, &m, "b").await.status, 200);
        assert_eq!(
            common::blocking_get_status(&m.url("/health")),
            Some(503),
            "a stopped model is not ready"
        );
        assert_eq!(
            metric(&m, r#"modelmux_model_state{model="a",state="stopped"}"#),
            Some(1.0)
        );

        let r = admin(&c, &m, "POST", "/admin/models/a/start", "").await;
        assert_eq!(r.status, 202);
        state_becomes(&m, "a", "ready", T).await;
        assert_eq!(complete(&c, &m, "a").await.status, 200);
        assert_eq!(pid(&m, "b"), Some(b0));
        assert!(!m.log().contains("bug:"), "{}", m.log());
    });
}

#[test]
fn an_operator_start_of_a_failed_model_gives_it_a_fresh_restart_budget() {
    run_async(TEST, async {
        let c = client();
        let m = Setup::new(&[
            (
                "bad",
                json!({"env": {"MOCK_CRASH_AT_START": "bad weights"}}),
            ),
            ("good", json!({})),
        ])
        .env("MODELMUX_ADMIN_KEY", ADMIN_KEY)
        .env("MODELMUX_ON_FAILURE", "degrade")
        .env("MODELMUX_MAX_RESTARTS", "1")
        .env("MODELMUX_RESTART_DELAY", "0.05")
        .start();
        state_becomes(&m, "bad", "failed", T).await;
        let restarts = |m: &Modelmux| m.log().lines().filter(|l| l.contains("; restart ")).count();
        assert_eq!(restarts(&m), 1);
        let r = admin(&c, &m, "POST", "/admin/models/bad/start", "").await;
        assert_eq!(r.status, 202, "{}", r.body);
        // It crashes again, is restarted once more (a fresh budget), then fails.
        wait_for(T, "a restart after the operator's start", || {
            restarts(&m) == 2
        })
        .await;
        state_becomes(&m, "bad", "failed", T).await;
        let log = m.log();
        let last = log
            .lines()
            .rfind(|l| l.contains("restarts within 10 minutes"))
            .unwrap();
        assert!(last.contains("1 restarts within 10 minutes"), "{last}");
    });
}

#[test]
fn a_restart_lets_the_requests_in_flight_finish() {
    run_async(TEST, async {
        let c = client();
        let (m, _files) = start_with_file(&[entry("a", json!({}))], &[]);
        let a0 = pid(&m, "a").unwrap();
        let url = m.url("/v1/completions");
        let slow = {
            let c = c.clone();
            tokio::spawn(async move {
                common::post(
                    &c,
                    &url,
                    r#"{"model": "a", "stream": true, "mock_chunks": 10, "mock_delay_ms": 150}"#,
                )
                .await
            })
        };
        wait_for(T, "the stream in flight", || {
            admin_blocking_in_flight(&m) == 1
        })
        .await;
        let r = admin(&c, &m, "POST", "/admin/models/a/restart", "").await;
        assert_eq!(r.status, 202);
        let done = slow.await.unwrap();
        assert_eq!(done.status, 200);
        assert!(
            done.body.contains("tok9") && done.body.contains("[DONE]"),
            "the stream ran to its end: {}",
            done.body
        );
        wait_for(T, "a restarted", || pid(&m, "a").is_some_and(|p| p != a0)).await;
        // Log lines go out in batches: wait for the line.
        wait_for(T, "the log line waiting for 1 request(s) in flight", || {
            m.log().contains("waiting for 1 request(s) in flight")
        })
        .await;
    });
}

/// Requests in flight to the first model, from the admin API.
fn admin_blocking_in_flight(m: &Modelmux) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    write!(s, "GET /admin/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let body: Value = serde_json::from_str(buf.split_once("\r\n\r\n").unwrap().1).unwrap();
    body["models"][0]["in_flight"].as_u64().unwrap()
}

#[test]
fn run_time_adapters_load_route_list_and_unload() {
    run_async(TEST, async {
        let c = client();
        let (m, files) = start_with_file(
            &[
                entry(
                    "base",
                    json!({"params": "--served-model-name base --enable-lora"}),
                ),
                entry("plain", json!({})),
            ],
            &[],
        );
        let sql = adapter_dir(files.path(), "sql-lora");
        let r = admin(
            &c,
            &m,
            "POST",
            "/admin/models/base/adapters",
            &json!({"name": "sql", "path": sql}).to_string(),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        // Routed to its base model's engine, listed with the engine's own fields.
        let r = complete(&c, &m, "sql").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-mock-served-by"], "base");
        let list = common::get(&c, &m.url("/v1/models")).await.json();
        let e = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == "sql")
            .expect("listed")
            .clone();
        assert_eq!(
            (e["parent"].as_str(), e["root"].as_str()),
            (Some("base"), Some(sql.as_str()))
        );
        let listed = admin(&c, &m, "GET", "/admin/models", "").await.json();
        assert_eq!(
            listed["models"][0]["adapters"],
            json!([{"name": "sql", "path": sql, "source": "runtime"}])
        );

        // A name in use, a model name included, is 409; a model without --enable-lora is 400.
        for name in ["sql", "plain", "base"] {
            let r = admin(
                &c,
                &m,
                "POST",
                "/admin/models/base/adapters",
                &json!({"name": name, "path": sql}).to_string(),
            )
            .await;
            assert_eq!(r.status, 409, "{name}: {}", r.body);
        }
        let r = admin(
            &c,
            &m,
            "POST",
            "/admin/models/plain/adapters",
            &json!({"name": "x", "path": sql}).to_string(),
        )
        .await;
        assert_eq!(r.status, 400);
        assert!(r.body.contains("--enable-lora"), "{}", r.body);

        let r = admin(&c, &m, "DELETE", "/admin/models/base/adapters/sql", "").await;
        assert_eq!((r.status, r.body.as_str()), (204, ""));
        assert_eq!(complete(&c, &m, "sql").await.status, 404);
        let r = admin(&c, &m, "DELETE", "/admin/models/base/adapters/sql", "").await;
        assert_eq!(r.status, 404);
    });
}

#[test]
fn run_time_adapters_are_refused_for_engines_other_than_vllm() {
    run_async(TEST, async {
        let c = client();
        // SGLang takes --enable-lora, but run-time loading is vLLM's API: a clear 400 that
        // says how to serve the adapter instead.
        let mock = format!("{} --mock-dialect sglang", common::MOCK);
        let (m, files) = start_with_file(
            &[entry(
                "sg",
                json!({"engine": "sglang", "engine_cmd": mock,
                       "params": "--served-model-name sg --enable-lora"}),
            )],
            &[],
        );
        let sql = adapter_dir(files.path(), "sql-lora");
        let r = admin(
            &c,
            &m,
            "POST",
            "/admin/models/sg/adapters",
            &json!({"name": "sql", "path": sql}).to_string(),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.body.contains("engine sglang") && r.body.contains("fine_tune_weights"),
            "{}",
            r.body
        );
        assert_eq!(complete(&c, &m, "sql").await.status, 404);
        assert_eq!(complete(&c, &m, "sg").await.status, 200);
    });
}

#[test]
fn a_failed_adapter_load_leaves_everything_as_it_was() {
    run_async(TEST, async {
        let c = client();
        let (m, files) = start_with_file(
            &[entry(
                "base",
                json!({"params": "--served-model-name base --enable-lora"}),
            )],
            &[],
        );
        let before = common::get(&c, &m.url("/v1/models")).await.json();
        // A directory without adapter_config.json: the engine refuses it (404 there).
        let empty = files.path().join("not-an-adapter");
        std::fs::create_dir_all(&empty).unwrap();
        let r = admin(
            &c,
            &m,
            "POST",
            "/admin/models/base/adapters",
            &json!({"name": "bad", "path": empty}).to_string(),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.body.contains("No adapter found"),
            "the engine's reason: {}",
            r.body
        );
        // A path that does not exist never reaches the engine.
        let r = admin(
            &c,
            &m,
            "POST",
            "/admin/models/base/adapters",
            r#"{"name": "bad", "path": "/no/such/dir"}"#,
        )
        .await;
        assert_eq!(r.status, 400);
        assert_eq!(common::get(&c, &m.url("/v1/models")).await.json(), before);
        assert_eq!(complete(&c, &m, "bad").await.status, 404);
        // The name is free again.
        let good = adapter_dir(files.path(), "good");
        let r = admin(
            &c,
            &m,
            "POST",
            "/admin/models/base/adapters",
            &json!({"name": "bad", "path": good}).to_string(),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
    });
}

#[test]
fn adapters_are_loaded_again_after_their_engine_restarts() {
    run_async(TEST, async {
        let c = client();
        let (m, files) = start_with_file(
            &[entry(
                "base",
                json!({"params": "--served-model-name base --enable-lora"}),
            )],
            &[],
        );
        let sql = adapter_dir(files.path(), "sql");
        let r = admin(
            &c,
            &m,
            "POST",
            "/admin/models/base/adapters",
            &json!({"name": "sql", "path": sql}).to_string(),
        )
        .await;
        assert_eq!(r.status, 201);
        let p0 = pid(&m, "base").unwrap();
        // The engine dies: modelmux restarts it and loads the adapter into the new engine.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_for(T, "a new engine, ready", || {
            pid(&m, "base").is_some_and(|p| p != p0) && model(&m, "base")["state"] == "ready"
        })
        .await;
        let r = complete(&c, &m, "sql").await;
        assert_eq!(r.status, 200, "{}", r.body);
        // modelmux's log reaches the test through a pipe: wait for the line, do not race it.
        wait_for(T, "the adapter loaded again, in the log", || {
            m.log()
                .contains("LoRA adapter loaded again after the engine started")
        })
        .await;
        // An adapter whose files are gone by then is dropped, the model serves on.
        std::fs::remove_file(std::path::Path::new(&sql).join("adapter_config.json")).unwrap();
        let r = admin(&c, &m, "POST", "/admin/models/base/restart", "").await;
        assert_eq!(r.status, 202);
        wait_for(T, "restarted", || {
            m.log()
                .contains("could not load the run-time LoRA adapter again")
        })
        .await;
        state_becomes(&m, "base", "ready", T).await;
        assert_eq!(complete(&c, &m, "sql").await.status, 404);
        assert_eq!(complete(&c, &m, "base").await.status, 200);
    });
}

#[test]
fn reload_starts_stops_restarts_and_leaves_the_rest_alone_under_load() {
    run_async(TEST, async {
        let c = client();
        let keep = entry("keep", json!({}));
        let (m, files) = start_with_file(
            &[
                keep.clone(),
                entry("change", json!({})),
                entry("drop", json!({})),
            ],
            &[],
        );
        let (keep0, change0, drop0) = (
            pid(&m, "keep").unwrap(),
            pid(&m, "change").unwrap(),
            pid(&m, "drop").unwrap(),
        );
        // Requests to the unchanged model, without a pause, all through the reload.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let load = {
            let (c, url) = (c.clone(), m.url("/v1/completions"));
            let (stop, done) = (stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut codes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    codes.push(
                        common::post(&c, &url, r#"{"model": "keep", "prompt": "x"}"#)
                            .await
                            .status,
                    );
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                codes
            })
        };
        write_config(
            &files,
            &[
                keep,
                entry(
                    "change",
                    json!({"params": "--served-model-name change --max-model-len 2048"}),
                ),
                entry("new", json!({})),
            ],
        );
        let r = admin(&c, &m, "POST", "/admin/reload", "").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.json(),
            json!({"started": ["new"], "stopped": ["drop"], "restarted": ["change"], "unchanged": ["keep"]})
        );
        state_becomes(&m, "new", "ready", T).await;
        state_becomes(&m, "change", "ready", T).await;
        // A reload of mock engines can be over within a few requests: the load goes on
        // until it has sent enough to count (those after the reload must succeed too).
        wait_for(T, "eleven requests sent", || {
            done.load(std::sync::atomic::Ordering::Relaxed) > 10
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let codes = load.await.unwrap();
        assert!(
            codes.len() > 10 && codes.iter().all(|c| *c == 200),
            "{} requests: {codes:?}",
            codes.len()
        );
        assert_eq!(pid(&m, "keep"), Some(keep0), "unchanged: same engine");
        assert_ne!(pid(&m, "change"), Some(change0));
        assert!(!common::alive(drop0 as u32) && !common::alive(change0 as u32));
        let names: Vec<String> = health(&m)["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["keep", "change", "new"]);
        assert_eq!(complete(&c, &m, "drop").await.status, 404);
        assert_eq!(complete(&c, &m, "new").await.status, 200);
        let argv = common::get(&c, &m.url("/v1/models")).await;
        assert!(!argv.body.contains("\"drop\""));
        assert_eq!(common::blocking_get_status(&m.url("/health")), Some(200));
        // Nothing changed: everything unchanged, same engines.
        let r = admin(&c, &m, "POST", "/admin/reload", "").await;
        assert_eq!(r.json()["unchanged"], json!(["keep", "change", "new"]));
        assert_eq!(pid(&m, "keep"), Some(keep0));
    });
}

#[test]
fn an_invalid_reload_is_400_and_changes_nothing() {
    run_async(TEST, async {
        let c = client();
        let models = [entry("a", json!({})), entry("b", json!({}))];
        let (m, files) = start_with_file(&models, &[]);
        let before = health(&m);
        let pids = (pid(&m, "a"), pid(&m, "b"));
        for (bad, says) in [
            (
                r#"{"models": [ {"model_path": "#.to_string(),
                "malformed JSON",
            ),
            (
                json!({"models": [entry("a", json!({})), entry("a", json!({}))]}).to_string(),
                "a",
            ),
            (
                json!({"models": [{"model_path": "/no/such/model"}]}).to_string(),
                "model_path",
            ),
            (
                json!({"models": [entry("a", json!({"load": "sometimes"}))]}).to_string(),
                "load",
            ),
        ] {
            std::fs::write(files.path().join("models.json"), &bad).unwrap();
            let r = admin(&c, &m, "POST", "/admin/reload", "").await;
            assert_eq!(r.status, 400, "{bad}: {}", r.body);
            let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(
                msg.contains("nothing changed") && msg.contains(says),
                "{msg}"
            );
        }
        std::fs::remove_file(files.path().join("models.json")).unwrap();
        assert_eq!(admin(&c, &m, "POST", "/admin/reload", "").await.status, 400);
        let after = health(&m);
        assert_eq!(after["models"].as_array().unwrap().len(), 2);
        assert_eq!((pid(&m, "a"), pid(&m, "b")), pids);
        assert_eq!(before["status"], after["status"]);
    });
}

#[test]
fn sighup_reloads_and_a_bad_file_is_one_error_line() {
    run_async(TEST, async {
        let (m, files) = start_with_file(&[entry("a", json!({}))], &[]);
        let a0 = pid(&m, "a");
        write_config(&files, &[entry("a", json!({})), entry("b", json!({}))]);
        m.signal(nix::sys::signal::Signal::SIGHUP);
        state_becomes(&m, "b", "ready", T).await;
        assert_eq!(pid(&m, "a"), a0);
        // Log lines go out in batches: wait for the line.
        wait_for(T, "the log line SIGHUP: reloaded; started [b]", || {
            m.log().contains("SIGHUP: reloaded; started [b]")
        })
        .await;
        std::fs::write(files.path().join("models.json"), "{oops").unwrap();
        m.signal(nix::sys::signal::Signal::SIGHUP);
        wait_for(T, "the refusal", || {
            m.log().contains("SIGHUP: reload refused, nothing changed")
        })
        .await;
        assert_eq!(health(&m)["models"].as_array().unwrap().len(), 2);
        assert_eq!(pid(&m, "a"), a0, "modelmux keeps serving");
        let c = client();
        assert_eq!(complete(&c, &m, "b").await.status, 200);
    });
}

#[test]
fn a_reload_that_does_not_fit_beside_the_running_models_is_refused() {
    use modelmux::weights::fixtures::LLAMA_3_8B;
    run_async(TEST, async {
        let root = tempfile::tempdir().unwrap();
        LLAMA_3_8B.write(&root.path().join("llama-a"), 1).unwrap();
        LLAMA_3_8B.write(&root.path().join("llama-b"), 1).unwrap();
        let llama = |dir: &str, name: &str| json!({"model_path": dir, "params": format!("--served-model-name {name} --max-model-len 4096")});
        let root_s = root.path().to_string_lossy().into_owned();
        let (m, files) = start_with_file(
            &[llama("llama-a", "a")],
            &[
                ("MODELMUX_GPUS", "1x24GiB"),
                ("MODELMUX_MODEL_ROOT", &root_s),
            ],
        );
        let a0 = pid(&m, "a");
        write_config(&files, &[llama("llama-a", "a"), llama("llama-b", "b")]);
        let c = client();
        let r = admin(&c, &m, "POST", "/admin/reload", "").await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.body.contains("does not fit beside the running models"),
            "{}",
            r.body
        );
        assert_eq!(health(&m)["models"].as_array().unwrap().len(), 1);
        assert_eq!(pid(&m, "a"), a0);
        // As an on-demand model it fits: it takes turns... but only with other on-demand
        // models, never with an always-loaded one, so it is refused too.
        write_config(
            &files,
            &[
                llama("llama-a", "a"),
                json!({"model_path": "llama-b", "params": "--served-model-name b --max-model-len 4096", "load": "on_demand"}),
            ],
        );
        let r = admin(&c, &m, "POST", "/admin/reload", "").await;
        assert_eq!(r.status, 400, "{}", r.body);
    });
}
