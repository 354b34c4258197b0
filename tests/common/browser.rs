//! A headless Chromium driven through chromedriver's WebDriver protocol (plain HTTP and
//! JSON, so no client library is needed). The driver runs in a process group of its own
//! that is killed when the [`Browser`] is dropped or its start fails, browser included.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::{HttpClient, client, free_port, request};

/// chromedriver's process group (the browser included), killed on drop: from the moment it
/// is spawned, so that a failed start leaves nothing behind either.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// One chromedriver with one browser session.
pub struct Browser {
    _driver: Driver,
    base: String,
    session: String,
    http: HttpClient,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width` × `height` CSS pixels, with
    /// the flags that work on a machine without a network or a display.
    pub async fn start(chromium: &Path, chromedriver: &Path, width: u32, height: u32) -> Self {
        let port = free_port();
        let driver = Driver(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start chromedriver"),
        );
        let profile = tempfile::tempdir().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = client();
        // chromedriver keeps connections open: ask through the HTTP client, not a
        // read-to-the-end probe.
        let status_url = format!("{base}/status");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let up = tokio::time::timeout(
                Duration::from_secs(2),
                http.get(status_url.parse().unwrap()),
            )
            .await;
            if matches!(up, Ok(Ok(ref r)) if r.status() == 200) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver did not start within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--hide-scrollbars", format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let mut browser = Browser {
            _driver: driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let created = browser.call("POST", "/session", &caps).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        browser
    }

    async fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let url = format!("{}{path}", self.base);
        let body = if method == "GET" || method == "DELETE" {
            String::new()
        } else {
            body.to_string()
        };
        let answer = request(
            &self.http,
            method,
            &url,
            &[("content-type", "application/json")],
            &body,
        )
        .await;
        let v: Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}: {}", answer.body));
        assert_eq!(answer.status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for the document to load.
    pub async fn goto(&self, url: &str) {
        self.call("POST", &self.session_path("/url"), &json!({"url": url}))
            .await;
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            &json!({"script": script, "args": []}),
        )
        .await
    }

    /// Resizes the browser window (CSS pixels).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.session_path("/window/rect"),
            &json!({"width": width, "height": height}),
        )
        .await;
    }

    /// A PNG screenshot of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self
            .call("GET", &self.session_path("/screenshot"), &Value::Null)
            .await;
        base64_decode(v.as_str().expect("screenshot is base64"))
    }

    /// Ends the session (the browser quits); drop kills whatever is left.
    pub async fn close(self) {
        let _ = request(
            &self.http,
            "DELETE",
            &format!("{}{}", self.base, self.session_path("")),
            &[],
            "",
        )
        .await;
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}
