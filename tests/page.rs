//! The status page at `/` (SPEC §6) in a real headless Chromium driven by chromedriver:
//! the model rows render, follow a restart, fit a phone's width, and the page says so when
//! modelmux goes away. Screenshots go to `target/tmp/page-screenshots/` (or
//! `MODELMUX_SCREENSHOT_DIR`). Also `/status` and `/` for clients that are not browsers.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::{Setup, client, get, post, request, run_async, tools};
use serde_json::{Value, json};

/// Each model card as the page shows it.
const ROWS: &str = r#"
return {
  overall: document.getElementById("overall").textContent,
  banner: document.getElementById("banner").classList.contains("show"),
  rows: [...document.querySelectorAll("article.model")].map(c => {
    const f = n => c.querySelector(`[data-field="${n}"]`).textContent;
    return {name: c.dataset.model, state: c.dataset.state, pill: f("state"), since: f("since"),
            names: f("names"), gpus: f("gpus"), process: f("process"), rps: f("rps"),
            load: f("load"), restarts: f("restarts"), last_exit: f("last_exit")};
  }),
};"#;

fn screenshot_dir() -> PathBuf {
    std::env::var_os("MODELMUX_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page-screenshots"))
}

fn save(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Polls the page until `cond` holds for what it shows; returns that view.
async fn wait_for(
    b: &Browser,
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let view = b.eval(ROWS).await;
        if cond(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the page to show {what}; it shows {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn row<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name}: {view:#}"))
}

#[test]
fn status_page_renders_the_models_and_follows_a_restart_in_chromium() {
    let Some((chromium, chromedriver)) = tools::require(
        tools::chromium(),
        "status_page_renders_the_models_and_follows_a_restart_in_chromium",
        "no chromium and chromedriver (apt-get install chromium chromium-driver)",
    ) else {
        return;
    };
    let mut m = Setup::new(&[
        ("chat", json!({"env": {"MOCK_STARTUP_DELAY_MS": "2500"}})),
        (
            "embed",
            json!({"fine_tune_weights": [{"model_name": "embed-sql", "model_path": "org/sql"}]}),
        ),
    ])
    .env("MODELMUX_RESTART_DELAY", "1")
    .start();
    m.wait_ready(Duration::from_secs(30));
    let page = m.url("/");
    run_async(Duration::from_secs(150), async {
        let b = Browser::start(&chromium, &chromedriver, 1200, 800).await;
        b.goto(&page).await;
        let view = wait_for(&b, Duration::from_secs(20), "both models ready", |v| {
            v["overall"] == "ready" && v["rows"].as_array().is_some_and(|r| r.len() == 2)
        })
        .await;
        let names: Vec<&str> = view["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["chat", "embed"], "plan order");
        let chat = row(&view, "chat").clone();
        assert_eq!(chat["pill"], "ready");
        assert_eq!(chat["restarts"], "0");
        assert_eq!(chat["gpus"], "none");
        assert!(
            chat["since"].as_str().unwrap().starts_with("for "),
            "{chat}"
        );
        assert_eq!(row(&view, "embed")["names"], "also embed-sql (adapter)");
        let pid_before = chat["process"].as_str().unwrap().to_string();
        assert!(pid_before.contains(" · "), "{pid_before}");
        assert_eq!(
            b.eval("return document.title").await,
            "modelmux · 2/2 ready"
        );

        // Traffic shows up as requests per second.
        let c = client();
        for _ in 0..20 {
            let r = post(&c, &m.url("/v1/completions"), r#"{"model": "chat"}"#).await;
            assert_eq!(r.status, 200);
        }
        wait_for(&b, Duration::from_secs(15), "chat's requests/s", |v| {
            row(v, "chat")["rps"]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(|r| r > 0.0)
        })
        .await;

        // The engine dies: the row leaves `ready`, then comes back with one restart.
        let _ = post(
            &c,
            &m.url("/v1/completions"),
            r#"{"model": "chat", "mock_exit": true}"#,
        )
        .await;
        let down = wait_for(&b, Duration::from_secs(20), "chat not ready", |v| {
            row(v, "chat")["state"] != "ready"
        })
        .await;
        let state = row(&down, "chat")["state"].as_str().unwrap().to_string();
        assert!(
            ["restarting", "starting"].contains(&state.as_str()),
            "{down:#}"
        );
        assert_eq!(row(&down, "chat")["pill"], state.as_str());
        assert_eq!(down["overall"], "not ready");
        assert_eq!(row(&down, "embed")["state"], "ready");
        save("desktop-restarting.png", &b.screenshot().await);

        let up = wait_for(&b, Duration::from_secs(30), "chat ready again", |v| {
            row(v, "chat")["state"] == "ready" && row(v, "chat")["restarts"] == "1"
        })
        .await;
        let chat = row(&up, "chat");
        assert_ne!(chat["process"], pid_before.as_str(), "a new engine pid");
        assert_ne!(chat["last_exit"], "—", "the exit is shown: {chat}");
        assert_eq!(up["overall"], "ready");
        save("desktop-ready.png", &b.screenshot().await);

        // A phone: one column, nothing wider than the screen.
        b.resize(390, 844).await;
        let overflow = b
            .eval("return document.documentElement.scrollWidth - window.innerWidth")
            .await;
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "wider than a phone by {overflow}"
        );
        let columns = b
            .eval(
                "const c = [...document.querySelectorAll('article.model')].map(e => e.getBoundingClientRect().left); \
                 return new Set(c).size",
            )
            .await;
        assert_eq!(columns, 1, "one column on a phone");
        save("phone.png", &b.screenshot().await);

        // modelmux goes away: the page says so instead of showing stale rows as current.
        m.signal(nix::sys::signal::Signal::SIGTERM);
        let gone = wait_for(&b, Duration::from_secs(30), "modelmux unreachable", |v| {
            v["overall"] == "unreachable"
        })
        .await;
        assert_eq!(gone["banner"], true);
        b.close().await;
    });
    assert_eq!(m.wait_exit(Duration::from_secs(20)), Some(0));
}

#[test]
fn status_json_and_the_root_for_clients_that_are_not_browsers() {
    let m = Setup::new(&[
        ("chat", json!({})),
        (
            "embed",
            json!({"fine_tune_weights": [{"model_name": "embed-sql", "model_path": "org/sql"}]}),
        ),
    ])
    .env("MODELMUX_API_KEY", "secret")
    .start();
    m.wait_ready(Duration::from_secs(30));
    run_async(Duration::from_secs(30), async {
        let c = client();
        let auth = [
            ("content-type", "application/json"),
            ("authorization", "Bearer secret"),
        ];
        let url = m.url("/v1/completions");
        for _ in 0..3 {
            let r = request(&c, "POST", &url, &auth, r#"{"model": "embed"}"#).await;
            assert_eq!(r.status, 200);
        }
        // Open like /health, even with an API key.
        let status = get(&c, &m.url("/status")).await;
        assert_eq!(status.status, 200);
        let s = status.json();
        assert_eq!(s["status"], "ready");
        assert!(s["now"].as_f64().unwrap() >= s["started"].as_f64().unwrap());
        let models = s["models"].as_array().unwrap();
        assert_eq!(models.len(), 2);
        let embed = &models[1];
        assert_eq!(embed["name"], "embed");
        assert_eq!(embed["state"], "ready");
        assert_eq!(embed["served_names"], json!(["embed"]));
        assert_eq!(embed["adapters"], json!(["embed-sql"]));
        assert_eq!(embed["requests_total"], 3);
        assert_eq!(embed["inflight"], 0);
        assert_eq!(embed["restarts"], 0);
        assert!(embed["pid"].as_u64().is_some() && embed["port"].as_u64().is_some());
        for key in ["since", "gpus", "queue_length", "gpu_share", "last_log"] {
            assert!(embed.get(key).is_some(), "{key} in {embed}");
        }
        assert_eq!(models[0]["requests_total"], 0);

        // The page for browsers only; curl and friends get the usual answers at `/`.
        let html = request(&c, "GET", &m.url("/"), &[("accept", "text/html")], "").await;
        assert_eq!(html.status, 200);
        assert_eq!(html.headers["content-type"], "text/html; charset=utf-8");
        assert!(
            html.headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        assert!(html.body.contains("<title>modelmux</title>"));
        // Not the page: `/` is any other path then (the API key first, then a 404 for a GET).
        let plain = get(&c, &m.url("/")).await;
        assert_eq!(plain.status, 401);
        let keyed = request(&c, "GET", &m.url("/"), &auth, "").await;
        assert_eq!(keyed.status, 404);
        assert_eq!(keyed.json()["error"]["code"], 404);
        // Other methods on both paths still go to the engines.
        let posted = request(
            &c,
            "POST",
            &m.url("/status"),
            &[
                ("authorization", "Bearer secret"),
                ("transfer-encoding", "chunked"),
            ],
            r#"{"model": "chat"}"#,
        )
        .await;
        assert_eq!(posted.status, 200, "{}", posted.body);
        assert_eq!(posted.headers["x-mock-path"], "/status");
    });
}
