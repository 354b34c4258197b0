use super::*;

/// What vLLM's `prometheus_client` writes (text format 0.0.4), abridged.
fn vllm(model: &str, running: u32) -> String {
    format!(
        r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="{model}",engine="0"}} {running}.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{model_name="{model}",engine="0"}} 42.0
# HELP vllm:generation_tokens_created Number of generation tokens processed.
# TYPE vllm:generation_tokens_created gauge
vllm:generation_tokens_created{{model_name="{model}",engine="0"}} 1.7e+09
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{model_name="{model}",engine="0",le="0.1"}} 1.0
vllm:time_to_first_token_seconds_bucket{{model_name="{model}",engine="0",le="+Inf"}} 2.0
vllm:time_to_first_token_seconds_count{{model_name="{model}",engine="0"}} 2.0
vllm:time_to_first_token_seconds_sum{{model_name="{model}",engine="0"}} 0.35
"#
    )
}

fn merged(engines: &[(&str, &str)]) -> (String, usize) {
    let mut e = Exposition::default();
    for (model, text) in engines {
        e.add(model, text);
    }
    let mut out = String::new();
    e.render(&mut out);
    (out, e.dropped)
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.starts_with(needle)).count()
}

#[test]
fn families_from_several_engines_are_merged_with_one_header_each() {
    let (a, b) = (vllm("chat", 2), vllm("embed", 0));
    let (out, dropped) = merged(&[("chat", &a), ("embed", &b)]);
    assert_eq!(dropped, 0, "{out}");
    for family in [
        "vllm:num_requests_running gauge",
        "vllm:generation_tokens_total counter",
        "vllm:generation_tokens_created gauge",
        "vllm:time_to_first_token_seconds histogram",
    ] {
        assert_eq!(count(&out, &format!("# TYPE {family}")), 1, "{out}");
    }
    assert_eq!(count(&out, "# HELP "), 4, "{out}");
    // Each family's samples follow its header: chat's, then embed's.
    let running: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("# TYPE vllm:num_requests_running"))
        .skip(1)
        .take(2)
        .collect();
    assert_eq!(
        running,
        [
            r#"vllm:num_requests_running{model="chat",model_name="chat",engine="0"} 2.0"#,
            r#"vllm:num_requests_running{model="embed",model_name="embed",engine="0"} 0.0"#,
        ]
    );
    assert!(out.contains(
        r#"vllm:time_to_first_token_seconds_bucket{model="embed",model_name="embed",engine="0",le="+Inf"} 2.0"#
    ));
    assert_eq!(count(&out, "vllm:time_to_first_token_seconds_"), 8);
}

#[test]
fn model_names_are_escaped_and_an_engine_model_label_is_kept_as_exported_model() {
    let text = "# TYPE x gauge\nx{model=\"llama\",a=\"1\"} 1\n";
    let (out, _) = merged(&[("we\"ird\\name\nx", text)]);
    assert!(
        out.contains(r#"x{model="we\"ird\\name\nx",exported_model="llama",a="1"} 1"#),
        "{out}"
    );
}

#[test]
fn label_values_keep_their_escapes_commas_and_braces() {
    let text = "# TYPE http_requests counter\nhttp_requests{path=\"/a,b}\\\"c\",code=\"200\",} 3 1700000000000\n";
    let (out, dropped) = merged(&[("m", text)]);
    assert_eq!(dropped, 0);
    assert!(
        out.contains(r#"http_requests{model="m",path="/a,b}\"c",code="200"} 3 1700000000000"#),
        "{out}"
    );
}

#[test]
fn openmetrics_input_is_normalised() {
    let text = r#"# TYPE requests counter
# UNIT requests requests
# HELP requests Requests served.
requests_total{code="200"} 7 # {trace_id="abc"} 1.0 1700000000.5
requests_created{code="200"} 1.7e9
# TYPE build info
build_info{version="1.2"} 1
# TYPE queue unknown
queue 3
# EOF
"#;
    let (out, dropped) = merged(&[("m", text)]);
    assert_eq!(dropped, 0, "{out}");
    assert_eq!(
        out,
        "# HELP requests_total Requests served.\n\
         # TYPE requests_total counter\n\
         requests_total{model=\"m\",code=\"200\"} 7\n\
         # HELP requests_created Requests served.\n\
         # TYPE requests_created gauge\n\
         requests_created{model=\"m\",code=\"200\"} 1.7e9\n\
         # TYPE build_info gauge\n\
         build_info{model=\"m\",version=\"1.2\"} 1\n\
         # TYPE queue untyped\n\
         queue{model=\"m\"} 3\n"
    );
}

#[test]
fn samples_without_a_header_are_untyped_families_of_their_own() {
    let text = "# TYPE a gauge\na 1\nstray_metric{x=\"1\"} 2\nstray_metric{x=\"2\"} 3\n";
    let (out, _) = merged(&[("m", text)]);
    assert_eq!(count(&out, "# TYPE stray_metric untyped"), 1, "{out}");
    assert_eq!(count(&out, "stray_metric{"), 2, "{out}");
}

#[test]
fn a_type_clash_between_engines_keeps_the_first_engines_samples() {
    let (out, dropped) = merged(&[
        ("a", "# TYPE x gauge\nx 1\n"),
        ("b", "# TYPE x counter\nx 2\n"),
    ]);
    assert_eq!(dropped, 1);
    assert_eq!(out, "# TYPE x gauge\nx{model=\"a\"} 1\n");
}

#[test]
fn bad_lines_and_modelmux_families_are_dropped_and_the_rest_kept() {
    let text = "# TYPE ok gauge\n\
                ok 1\n\
                9bad 1\n\
                ok{unterminated=\"x} 1\n\
                ok{a=\"1\",a=\"2\"} 1\n\
                ok{a=\"1\"} notanumber\n\
                ok{a=\"1\" b=\"2\"} 1\n\
                modelmux_requests_total 5\n\
                ok{a=\"2\"} +Inf\n\
                ok{a=\"3\"} NaN\n";
    let (out, dropped) = merged(&[("m", text)]);
    assert_eq!(dropped, 6, "{out}");
    assert_eq!(
        out,
        "# TYPE ok gauge\nok{model=\"m\"} 1\nok{model=\"m\",a=\"2\"} +Inf\nok{model=\"m\",a=\"3\"} NaN\n"
    );
}

#[test]
fn scrape_errors_render_one_counter_per_model() {
    let errors = ScrapeErrors::new(["chat", "em\"bed"]);
    errors.count(1);
    errors.count(1);
    errors.count(7);
    let mut out = String::new();
    errors.render(&mut out);
    assert!(out.contains("modelmux_engine_scrape_errors_total{model=\"chat\"} 0\n"));
    assert!(out.contains("modelmux_engine_scrape_errors_total{model=\"em\\\"bed\"} 2\n"));
    assert_eq!(errors.get(1), 2);
}

/// A loopback server that answers `GET /metrics` with `body` after `delay`.
async fn engine(body: &'static str, delay: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_slow_engine_is_left_out_and_counted_within_the_budget() {
    let fast = engine("# TYPE up gauge\nup 1\n", Duration::ZERO).await;
    let slow = engine("# TYPE up gauge\nup 1\n", Duration::from_secs(30)).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let targets = [("fast", fast), ("slow", slow), ("gone", closed)]
        .into_iter()
        .enumerate()
        .map(|(index, (model, authority))| Target {
            index,
            model: model.into(),
            authority,
            path: "/metrics".into(),
            authorization: None,
        })
        .collect();
    let errors = ScrapeErrors::new(["fast", "slow", "gone"]);
    let started = std::time::Instant::now();
    let mut out = String::new();
    append_engines(&mut out, targets, &errors).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(took >= BUDGET, "waited for the slow engine: {took:?}");
    assert_eq!((errors.get(0), errors.get(1), errors.get(2)), (0, 1, 1));
    assert!(out.contains("up{model=\"fast\"} 1\n"), "{out}");
    assert!(!out.contains("up{model=\"slow\"}"), "{out}");
}

#[test]
fn sums_add_every_label_set_of_exactly_that_name() {
    let two_engines = format!(
        "{}vllm:num_requests_running{{model_name=\"m\",engine=\"1\"}} 2.0\n",
        vllm(r#"m} {\"odd\""#, 3)
    );
    let got = sums(
        &two_engines,
        &[
            "vllm:num_requests_running",
            "vllm:generation_tokens_total",
            "vllm:generation_tokens",
            "vllm:absent",
        ],
    );
    assert_eq!(got, [Some(5.0), Some(42.0), None, None]);
}

/// A loopback server that answers `GET /metrics` only to `Authorization: Bearer k3y`
/// (401 otherwise), as a server that guards every path does.
async fn guarded_engine() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let answer: &[u8] = if head.contains("\r\nauthorization: bearer k3y\r\n") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nup 1\n"
                } else {
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_engine_with_its_own_key_is_asked_with_it() {
    let authority = guarded_engine().await;
    let target = |index: usize, model: &str, authorization: Option<&str>| Target {
        index,
        model: model.into(),
        authority: authority.clone(),
        path: "/metrics".into(),
        authorization: authorization.map(str::to_string),
    };
    let targets = vec![
        target(0, "keyed", Some("Bearer k3y")),
        target(1, "bare", None),
    ];
    let errors = ScrapeErrors::new(["keyed", "bare"]);
    let mut out = String::new();
    append_engines(&mut out, targets, &errors).await;
    assert!(out.contains("up{model=\"keyed\"} 1\n"), "{out}");
    assert_eq!((errors.get(0), errors.get(1)), (0, 1));
}
