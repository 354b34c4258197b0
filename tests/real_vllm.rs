//! The real-engine tier: the real `modelmux` binary with real vLLM engines (vLLM's CPU build,
//! tiny random-weight Llamas and a LoRA adapter made offline by `scripts/real/setup.sh`).
//!
//! Runs under `make test-vllm`; plain `cargo test` skips it with a printed reason (it needs
//! `MODELMUX_REAL_DIR`). Engines take 25-60 s to start on 2 cores, so one run of two engines
//! carries every case that can share it, in order; the cases that end a run (SIGKILL, a bad
//! flag, an impossible KV cache) have runs of their own, two at a time (see `real::Slots`).
//! Each case is reported on its own, and a failed case does not stop the next.

mod real;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use real::procs::{self, Proc, engine_tree, still_running};
use real::{Cases, READY_TIMEOUT, Record, Run, Tier, http, lines, metric, run};
use serde_json::{Value, json};

/// The admin key of the runs that use the admin API.
const ADMIN_KEY: &str = "real-admin-key";

/// An admin call.
fn admin(run: &Run, method: &str, path: &str, body: &Value) -> Result<http::Response, String> {
    let auth = format!("Bearer {ADMIN_KEY}");
    http::request(
        run.port,
        method,
        path,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        &body.to_string(),
    )
    .map_err(io)
}

fn text(j: &Value) -> String {
    j["choices"][0]["text"].as_str().unwrap_or("").to_string()
}

/// Run-time LoRA adapters (vLLM's runtime LoRA API) and reloads on real engines (SPEC §8):
/// an adapter loaded at run time routes, lists and unloads; a bad one changes nothing; a
/// reload that changes nothing touches nothing; a reload that changes `a` restarts it (its
/// run-time adapter loaded again) while `b` serves on untouched.
fn run_time_control(
    tier: &Tier,
    run: &Run,
    cases: &mut Cases,
    models: &[Value],
    config: &std::path::Path,
) {
    let lora = tier.model("tiny-llama-a-lora");
    cases.run(
        "a LoRA adapter loaded at run time routes and is listed",
        || {
            let r = admin(
                run,
                "POST",
                "/admin/models/a/adapters",
                &json!({"name": "a-lora-rt", "path": lora}),
            )?;
            ensure!(r.status == 201, "load: {} {}", r.status, r.body);
            let prompt = "The model routes each request";
            let configured = completion(run, "a-lora", prompt, 12)?;
            let loaded = completion(run, "a-lora-rt", prompt, 12)?;
            ensure!(
                loaded["model"] == "a-lora-rt",
                "answered as {}",
                loaded["model"]
            );
            ensure!(
                text(&configured) == text(&loaded),
                "the same adapter answered differently: {:?} vs {:?}",
                text(&configured),
                text(&loaded)
            );
            let list = http::get(run.port, "/v1/models").map_err(io)?.json()?;
            let e = listed(&list, "a-lora-rt").ok_or(format!("not listed: {list}"))?;
            ensure!(
                e["parent"] == "a" && e["root"] == lora.as_str(),
                "entry: {e}"
            );
            Ok(format!(
                "answers {:?} like the configured adapter; listed with parent a",
                text(&loaded)
            ))
        },
    );

    cases.run("a failed adapter load leaves everything as it was", || {
        let before = http::get(run.port, "/v1/models").map_err(io)?.json()?;
        let not_adapter = tier.model("tiny-llama-b");
        let r = admin(
            run,
            "POST",
            "/admin/models/a/adapters",
            &json!({"name": "broken", "path": not_adapter}),
        )?;
        ensure!(
            r.status == 400 || r.status == 502,
            "a model directory as an adapter: {} {}",
            r.status,
            r.body
        );
        let refusal = r.body.clone();
        let after = http::get(run.port, "/v1/models").map_err(io)?.json()?;
        ensure!(
            before == after,
            "/v1/models changed:
{before}
{after}"
        );
        let r = http::post_json(
            run.port,
            "/v1/completions",
            &json!({"model": "broken", "prompt": "x", "max_tokens": 2}),
        )
        .map_err(io)?;
        ensure!(r.status == 404, "the name routes: {} {}", r.status, r.body);
        Ok(format!(
            "refused ({refusal}); /v1/models unchanged; the name does not route"
        ))
    });

    cases.run("a reload that changes nothing touches nothing", || {
        let pids = (run.engine_pid("a"), run.engine_pid("b"));
        let r = admin(run, "POST", "/admin/reload", &json!({}))?;
        ensure!(r.status == 200, "{} {}", r.status, r.body);
        let j = r.json()?;
        ensure!(
            j["unchanged"] == json!(["a", "b"]) && j["restarted"] == json!([]),
            "{j}"
        );
        ensure!(
            (run.engine_pid("a"), run.engine_pid("b")) == pids,
            "engines changed"
        );
        Ok(format!("{j}"))
    });

    cases.run("a reload restarts a changed model, loads its adapter again, the other serves on", || {
        let (a0, b0) = (run.engine_pid("a"), run.engine_pid("b"));
        let before = completion(run, "a-lora-rt", "Once upon a time", 8)?;
        let mut changed = models.to_vec();
        let params = changed[0]["params"].as_str().unwrap_or("").to_string();
        changed[0]["params"] = json!(format!("{params} --max-num-seqs 8"));
        std::fs::write(config, json!({"models": changed}).to_string()).map_err(io)?;
        let r = admin(run, "POST", "/admin/reload", &json!({}))?;
        ensure!(r.status == 200, "{} {}", r.status, r.body);
        let j = r.json()?;
        ensure!(j["restarted"] == json!(["a"]) && j["unchanged"] == json!(["b"]), "{j}");
        let t0 = Instant::now();
        let mut b_codes = Vec::new();
        loop {
            let r = http::post_json(run.port, "/v1/completions", &json!({"model": "b", "prompt": "hi", "max_tokens": 1})).map_err(io)?;
            b_codes.push(r.status);
            if run.model_health("a").is_some_and(|m| m["state"] == "ready") && run.engine_pid("a") != a0 {
                break;
            }
            ensure!(t0.elapsed() < READY_TIMEOUT, "a not ready again within {READY_TIMEOUT:?}:\n{}", run.log_tail(30));
            std::thread::sleep(Duration::from_millis(500));
        }
        let took = t0.elapsed();
        ensure!(b_codes.iter().all(|c| *c == 200), "b during the reload: {b_codes:?}");
        ensure!(run.engine_pid("b") == b0, "b's engine changed");
        let after = completion(run, "a-lora-rt", "Once upon a time", 8)?;
        ensure!(text(&before) == text(&after), "the adapter answers differently after the restart: {:?} vs {:?}", text(&before), text(&after));
        let r = admin(run, "DELETE", "/admin/models/a/adapters/a-lora-rt", &json!({}))?;
        ensure!(r.status == 204, "unload: {} {}", r.status, r.body);
        let r = http::post_json(run.port, "/v1/completions", &json!({"model": "a-lora-rt", "prompt": "x", "max_tokens": 2})).map_err(io)?;
        ensure!(r.status == 404, "after unload: {}", r.status);
        Ok(format!(
            "a ready again after {:.0} s with a new engine, its adapter loaded again; b answered {} requests meanwhile, all 200",
            took.as_secs_f64(),
            b_codes.len()
        ))
    });
}

fn io<E: std::fmt::Display>(e: E) -> String {
    format!("request failed: {e}")
}

/// The entry of `id` in an OpenAI model list.
fn listed<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list["data"].as_array()?.iter().find(|m| m["id"] == id)
}

fn completion(run: &Run, model: &str, prompt: &str, max_tokens: u32) -> Result<Value, String> {
    let r = http::post_json(
        run.port,
        "/v1/completions",
        &json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}),
    )
    .map_err(io)?;
    if r.status != 200 {
        return Err(format!("{model}: status {}: {}", r.status, r.body));
    }
    r.json()
}

#[test]
fn two_engines_and_an_adapter() {
    let Some(tier) = Tier::find("two_engines_and_an_adapter", 2) else {
        return;
    };
    let adapter = json!({"fine_tune_weights": [
        {"model_name": "a-lora", "model_path": tier.model("tiny-llama-a-lora")}
    ]});
    let models = vec![
        tier.spec("tiny-llama-a", "a", None, "", adapter),
        tier.spec("tiny-llama-b", "b", None, "", json!({})),
    ];
    // From a file, so that the reload cases can change it; with the admin API.
    let files = tempfile::tempdir().expect("a temporary directory");
    let config = files.path().join("models.json");
    let admin_env = [("MODELMUX_ADMIN_KEY", ADMIN_KEY)];
    let mut run = tier.start_from_file("two-engines", &models, &admin_env, &config);
    let mut cases = Cases::new("two_engines_and_an_adapter");

    let ready = cases.run("two engines and an adapter become ready", || {
        let took = run.wait_ready(READY_TIMEOUT)?;
        Ok(format!(
            "/health 200 after {:.1} s; modelmux logged {:?}",
            took.as_secs_f64(),
            run.ready_times()
        ))
    });
    if !ready {
        drop(run);
        cases.finish();
        return;
    }

    cases.run("plan and serve give the same engine ports", || {
        let plan = run.plan.clone()?;
        let mut ports = Vec::new();
        for model in plan["models"]
            .as_array()
            .ok_or(format!("no models in {plan}"))?
        {
            let name = model["name"].as_str().unwrap_or("?");
            let served = run.engine_port(name);
            ensure!(
                model["port"].as_u64() == served.map(u64::from),
                "{name}: plan said port {}, serve uses {served:?}",
                model["port"]
            );
            ports.push(format!("{name}: {}", model["port"]));
        }
        Ok(ports.join(", "))
    });

    cases.run("CPU engines get disjoint cores (SPEC 7)", || {
        let plan = run.plan.clone()?;
        let mut binds = Vec::new();
        for model in plan["models"]
            .as_array()
            .ok_or(format!("no models in {plan}"))?
        {
            let bind = model["env"]["VLLM_CPU_OMP_THREADS_BIND"]
                .as_str()
                .ok_or(format!(
                    "{}: no VLLM_CPU_OMP_THREADS_BIND in the plan",
                    model["name"]
                ))?;
            binds.push(bind.to_string());
        }
        ensure!(
            binds.len() == 2 && binds[0] != binds[1],
            "the engines share cores: {binds:?}"
        );
        Ok(binds.join(" / "))
    });

    cases.run("engine log lines keep their severity", || {
        let records = run.records();
        let warnings: Vec<Record> = records
            .iter()
            .filter(|r| r.is_engine_output() && r.message().contains(") WARNING "))
            .cloned()
            .collect();
        let wrong: Vec<Record> = warnings
            .iter()
            .filter(|r| r.level() != "WARN")
            .cloned()
            .collect();
        ensure!(!warnings.is_empty(), "no vLLM WARNING line to look at");
        ensure!(
            wrong.is_empty(),
            "{} of {} vLLM WARNING lines were not logged at WARN, e.g.:\n{}",
            wrong.len(),
            warnings.len(),
            lines(&wrong[..wrong.len().min(3)])
        );
        let probes: Vec<Record> = records
            .iter()
            .filter(|r| r.message().contains("\"GET /health HTTP/1.1\""))
            .cloned()
            .collect();
        ensure!(
            probes.is_empty(),
            "{} access-log lines of modelmux's health probes at {} (want debug at most), e.g.:\n{}",
            probes.len(),
            probes[0].level(),
            lines(&probes[..1])
        );
        Ok(format!(
            "{} vLLM WARNING lines at WARN; no probe access lines at info",
            warnings.len()
        ))
    });

    cases.run("/v1/models keeps vLLM's fields", || {
        let front = http::get(run.port, "/v1/models").map_err(io)?.json()?;
        ensure!(front["object"] == "list", "not a list: {front}");
        let mut notes = Vec::new();
        for (engine, ids) in [("a", vec!["a", "a-lora"]), ("b", vec!["b"])] {
            let port = run.engine_port(engine).ok_or("no engine port in /health")?;
            let own = http::get(port, "/v1/models").map_err(io)?.json()?;
            for id in ids {
                let want = listed(&own, id).ok_or(format!("the engine does not list {id}"))?;
                let got = listed(&front, id)
                    .ok_or(format!("{id} is missing from the front's /v1/models: {front}"))?;
                for field in ["owned_by", "root", "parent", "max_model_len"] {
                    ensure!(
                        got.get(field) == want.get(field),
                        "{id}.{field}: the front says {}, the engine says {}\nfront: {got}\nengine: {want}",
                        got.get(field).unwrap_or(&Value::Null),
                        want.get(field).unwrap_or(&Value::Null)
                    );
                }
                notes.push(format!("{id}: max_model_len {}", got["max_model_len"]));
            }
        }
        Ok(notes.join(", "))
    });

    cases.run("chat completion", || {
        let body = json!({"model": "b", "messages": [{"role": "user", "content": "Say hello"}],
                          "max_tokens": 8, "temperature": 0});
        let r = http::post_json(run.port, "/v1/chat/completions", &body).map_err(io)?;
        ensure!(r.status == 200, "status {}: {}", r.status, r.body);
        let j = r.json()?;
        ensure!(
            j["object"] == "chat.completion"
                && j["model"] == "b"
                && j["choices"][0]["message"]["content"].is_string()
                && j["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
            "unexpected answer: {j}"
        );
        Ok(format!("{} tokens", j["usage"]["completion_tokens"]))
    });

    cases.run("completion", || {
        let j = completion(&run, "a", "Once upon a time", 8)?;
        ensure!(
            j["object"] == "text_completion"
                && j["model"] == "a"
                && j["choices"][0]["text"].is_string(),
            "unexpected answer: {j}"
        );
        Ok(format!("{} tokens", j["usage"]["completion_tokens"]))
    });

    cases.run("stream to [DONE]", || {
        let body = json!({"model": "b", "prompt": "Once", "max_tokens": 16, "stream": true, "temperature": 0});
        let mut s = http::open_stream(run.port, "/v1/completions", &body).map_err(io)?;
        ensure!(s.status == 200, "status {}", s.status);
        let mut events = 0;
        let mut done = false;
        while let Some(data) = s.next_data().map_err(io)? {
            if data == "[DONE]" {
                done = true;
                break;
            }
            let v: Value = serde_json::from_str(&data).map_err(|e| format!("event {data:?}: {e}"))?;
            ensure!(v["object"] == "text_completion", "unexpected event {v}");
            events += 1;
        }
        ensure!(done, "the stream ended without data: [DONE] after {events} events");
        ensure!(events >= 2, "only {events} events before [DONE]");
        ensure!(s.next_data().map_err(io)?.is_none(), "data after [DONE]");
        Ok(format!("{events} events, then [DONE]"))
    });

    cases.run("/predict with and without route", || {
        let chat =
            json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
        let r = http::request(
            run.port,
            "POST",
            "/predict",
            &[
                ("Content-Type", "application/json"),
                ("route", "/v1/chat/completions"),
            ],
            &chat.to_string(),
        )
        .map_err(io)?;
        ensure!(
            r.status == 200,
            "route /v1/chat/completions: {} {}",
            r.status,
            r.body
        );
        ensure!(
            r.json()?["object"] == "chat.completion",
            "not a chat completion: {}",
            r.body
        );
        let plain = json!({"model": "b", "prompt": "hi", "max_tokens": 4});
        let r = http::post_json(run.port, "/predict", &plain).map_err(io)?;
        ensure!(r.status == 200, "no route: {} {}", r.status, r.body);
        ensure!(
            r.json()?["object"] == "text_completion",
            "not a completion: {}",
            r.body
        );
        Ok("route: chat.completion; default: text_completion".into())
    });

    cases.run(
        "the adapter answers differently from its base at temperature 0",
        || {
            let prompt = "The model routes each request";
            let base = completion(&run, "a", prompt, 16)?;
            let again = completion(&run, "a", prompt, 16)?;
            let lora = completion(&run, "a-lora", prompt, 16)?;
            let text = |j: &Value| j["choices"][0]["text"].as_str().unwrap_or("").to_string();
            ensure!(
                text(&base) == text(&again),
                "the base is not deterministic: {base} / {again}"
            );
            ensure!(lora["model"] == "a-lora", "answered as {}", lora["model"]);
            ensure!(
                text(&base) != text(&lora),
                "the adapter answered like its base: {:?}",
                text(&base)
            );
            Ok(format!(
                "base {:?} vs adapter {:?}",
                text(&base),
                text(&lora)
            ))
        },
    );

    cases.run("a client that goes away stops the generation", || {
        let port = run.engine_port("a").ok_or("no engine port in /health")?;
        let scrape = || -> Result<(f64, f64), String> {
            let text = http::get(port, "/metrics").map_err(io)?.body;
            let made = metric(&text, "vllm:generation_tokens_total", "model_name=\"a\"")
                .ok_or("no vllm:generation_tokens_total for a in the engine's /metrics")?;
            let running =
                metric(&text, "vllm:num_requests_running", "model_name=\"a\"").unwrap_or(0.0);
            Ok((made, running))
        };
        let (before, _) = scrape()?;
        let max = 2000;
        let body = json!({"model": "a", "prompt": "x", "max_tokens": max, "ignore_eos": true,
                          "stream": true, "temperature": 0});
        let mut s = http::open_stream(run.port, "/v1/completions", &body).map_err(io)?;
        ensure!(s.status == 200, "status {}", s.status);
        for _ in 0..5 {
            s.next_data().map_err(io)?.ok_or("the stream ended early")?;
        }
        drop(s);
        let left = Instant::now();
        let (mut last, _) = scrape()?;
        let mut stable_since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let (made, running) = scrape()?;
            if made != last {
                last = made;
                stable_since = Instant::now();
            } else if running == 0.0 && stable_since.elapsed() >= Duration::from_secs(2) {
                break;
            }
            ensure!(
                left.elapsed() < Duration::from_secs(60),
                "still generating 60 s after the client left ({} tokens)",
                last - before
            );
        }
        let made = last - before;
        ensure!(
            made < f64::from(max) / 2.0,
            "{made} of {max} tokens were generated although the client left after 5 events"
        );
        Ok(format!(
            "{made} of {max} tokens generated; vllm:generation_tokens_total stopped growing"
        ))
    });

    // The processes of b's engine before it is killed, to find orphans afterwards.
    let mut old_engine: Vec<Proc> = Vec::new();
    let mut old_pid = 0;
    cases.run("kill -9 of an engine: /health 503 and requests 503 within 1 s", || {
        old_pid = run.engine_pid("b").ok_or("no pid for b in /health")?;
        old_engine = engine_tree(&run.processes(), old_pid);
        procs::kill(old_pid);
        let killed = Instant::now();
        let one_token = json!({"model": "b", "prompt": "hi", "max_tokens": 1});
        let request = || http::post_json(run.port, "/v1/completions", &one_token);
        let mut seen = Vec::new();
        while killed.elapsed() < Duration::from_secs(1) {
            let status = request().map(|r| r.status).unwrap_or(0);
            if seen.last().map(|(s, _)| *s) != Some(status) {
                seen.push((status, killed.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (health, body) = run.health();
        let state = run.model_health("b").map(|m| m["state"].clone());
        let state = state.unwrap_or_default();
        let r = request().map_err(io)?;
        let trace = format!("statuses in the first second (status, since the kill): {seen:?}");
        ensure!(
            health == 503 && state != "ready",
            "1 s after kill -9 of b's engine (pid {old_pid}) /health is {health}, b is {state}: \
             {body}\n{trace}"
        );
        ensure!(
            r.status == 503 && r.header("retry-after").is_some(),
            "1 s after kill -9, a request for b got {} (want 503 with Retry-After): {}\n{trace}",
            r.status,
            r.body
        );
        Ok(format!("/health 503 (b {state}); {trace}"))
    });

    cases.run("the killed engine restarts, ready again, no orphan", || {
        ensure!(old_pid != 0, "the kill case did not run");
        // Ready again means a new engine: a stale "ready" of the dead one does not count.
        let t0 = Instant::now();
        let new_pid = loop {
            let (status, _) = run.health();
            match run.engine_pid("b") {
                Some(pid) if pid != old_pid && status == 200 => break pid,
                _ => {}
            }
            ensure!(
                t0.elapsed() < READY_TIMEOUT,
                "b not ready with a new engine within {READY_TIMEOUT:?}: {}\n{}",
                run.health().1,
                run.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(250));
        };
        let took = t0.elapsed();
        let orphans = still_running(&old_engine);
        ensure!(
            orphans.is_empty(),
            "processes of the killed engine still run:\n{}",
            procs::list(&orphans)
        );
        completion(&run, "b", "hi", 4)?;
        Ok(format!(
            "ready again {:.1} s later (pid {old_pid} -> {new_pid}); its {} old processes are gone",
            took.as_secs_f64(),
            old_engine.len()
        ))
    });

    run_time_control(&tier, &run, &mut cases, &models, &config);

    cases.run(
        "SIGTERM: exit 0, no process left, no ERROR or traceback",
        || {
            let mark = run.mark();
            let before = run.processes();
            let t0 = Instant::now();
            run.signal(Signal::SIGTERM);
            let code = run.wait_exit(Duration::from_secs(120))?;
            let took = t0.elapsed();
            let left = procs::wait_gone(&run.marker, run.pid(), Duration::from_secs(2));
            let mut errors: Vec<Record> = run
                .records_since(mark)
                .into_iter()
                .filter(Record::is_error)
                .collect();
            let race = run::drop_vllm_shutdown_race(&mut errors);
            ensure!(
                code == Some(0),
                "exit status {code:?}; log tail:\n{}",
                run.log_tail(30)
            );
            ensure!(
                left.is_empty(),
                "still running after modelmux exited:\n{}",
                procs::list(&left)
            );
            ensure!(
                errors.is_empty(),
                "{} error lines during a clean shutdown:\n{}",
                errors.len(),
                lines(&errors)
            );
            let race = match race {
                0 => String::new(),
                n => format!("; vLLM's own shutdown race (vllm#48745) logged {n} lines"),
            };
            Ok(format!(
                "exit 0 after {:.1} s; {} processes stopped{race}",
                took.as_secs_f64(),
                before.len()
            ))
        },
    );
    drop(run);
    cases.finish();
}

#[test]
fn sigkill_of_modelmux_leaves_no_engine_process() {
    let Some(tier) = Tier::find("sigkill_of_modelmux_leaves_no_engine_process", 1) else {
        return;
    };
    // The engine has an API key of its own and the front another: the front's stays at
    // the front, the engine gets its own (README, MODELMUX_API_KEY).
    let models = vec![tier.spec(
        "tiny-llama-b",
        "b",
        Some(1),
        "--api-key engine-k3y",
        json!({}),
    )];
    let front_key = [("MODELMUX_API_KEY", "front-k3y")];
    let mut run = tier.start("sigkill", &models, &front_key, true);
    let mut cases = Cases::new("sigkill_of_modelmux_leaves_no_engine_process");
    cases.run(
        "with its own --api-key, vLLM gets its key, clients send the front's",
        || {
            run.wait_ready(READY_TIMEOUT)?;
            let body = json!({"model": "b", "prompt": "Hello", "max_tokens": 2});
            let with_key = |key: &str| {
                http::request(
                    run.port,
                    "POST",
                    "/v1/completions",
                    &[
                        ("Content-Type", "application/json"),
                        ("Authorization", &format!("Bearer {key}")),
                    ],
                    &body.to_string(),
                )
                .map_err(io)
            };
            let front = with_key("front-k3y")?;
            ensure!(front.status == 200, "front key: {} {}", front.status, front.body);
            let engine = with_key("engine-k3y")?;
            ensure!(engine.status == 401, "engine key at the front: {}", engine.status);
            let port = run.engine_port("b").ok_or("no engine port in /health")?;
            let direct = http::post_json(port, "/v1/completions", &body).map_err(io)?;
            ensure!(direct.status == 401, "vLLM without a key: {}", direct.status);
            let metrics = http::get(run.port, "/metrics").map_err(io)?;
            ensure!(
                metrics.body.contains("vllm:") && metrics.body.contains("model=\"b\""),
                "no vLLM series in /metrics"
            );
            Ok("front key 200, engine key at the front 401, vLLM alone 401; /metrics has vLLM's series".into())
        },
    );
    cases.run(
        "SIGKILL of modelmux (own session): no vLLM process after 10 s",
        || {
            let took = run.wait_ready(READY_TIMEOUT)?;
            let before = run.processes();
            ensure!(
                before.iter().any(|p| p.is("EngineCore")) && before.iter().any(|p| p.is("Worker")),
                "expected vLLM's EngineCore and Worker among:\n{}",
                procs::list(&before)
            );
            run.signal(Signal::SIGKILL);
            let killed = Instant::now();
            run.wait_exit(Duration::from_secs(10))?;
            let left = procs::wait_gone(&run.marker, 0, Duration::from_secs(10));
            ensure!(
                left.is_empty(),
                "{:.0} s after SIGKILL of modelmux these processes of its engine still run:\n{}",
                killed.elapsed().as_secs_f64(),
                procs::list(&left)
            );
            Ok(format!(
                "ready after {:.1} s; all {} processes gone {:.1} s after SIGKILL",
                took.as_secs_f64(),
                before.len(),
                killed.elapsed().as_secs_f64()
            ))
        },
    );
    drop(run);
    cases.finish();
}

#[test]
fn a_bad_flag_fails_at_once() {
    let Some(tier) = Tier::find("a_bad_flag_fails_at_once", 1) else {
        return;
    };
    let models = vec![tier.spec("tiny-llama-a", "a", Some(0), "--no-such-flag", json!({}))];
    let mut run = tier.start("bad-flag", &models, &[], false);
    let mut cases = Cases::new("a_bad_flag_fails_at_once");
    cases.run("a bad flag: exit 1 within one engine start, vLLM's error line once", || {
        let t0 = Instant::now();
        let code = loop {
            if let Some(code) = run.exited() {
                std::thread::sleep(Duration::from_millis(200));
                break code;
            }
            let starts = run.own_mentions("engine started").len();
            let restarts = run
                .model_health("a")
                .and_then(|m| m["restarts"].as_u64())
                .unwrap_or(0);
            ensure!(
                starts <= 1 && restarts == 0,
                "the engine was started again after its usage error ({starts} starts, {restarts} restarts, {:.0} s in); modelmux's own lines:\n{}",
                t0.elapsed().as_secs_f64(),
                lines(&run.records().into_iter().filter(|r| !r.is_engine_output()).collect::<Vec<_>>())
            );
            ensure!(t0.elapsed() < READY_TIMEOUT, "no exit within {READY_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(200));
        };
        let took = t0.elapsed();
        let error_line = "unrecognized arguments: --no-such-flag";
        // A loading report that comes between the engine's error and its exit quotes the
        // line as the engine's latest: that is the report, not the failure said twice.
        let mentions: Vec<Record> = run
            .own_mentions(error_line)
            .into_iter()
            .filter(|r| !r.is_progress())
            .collect();
        ensure!(code == Some(1), "exit status {code:?}; log tail:\n{}", run.log_tail(20));
        ensure!(
            mentions.len() == 1,
            "vLLM's error line ({error_line:?}) should be in exactly one of modelmux's own messages; it is in {}:\n{}",
            mentions.len(),
            lines(&mentions)
        );
        Ok(format!(
            "exit 1 after {:.1} s, one engine start; message: {}",
            took.as_secs_f64(),
            mentions[0].message().lines().next().unwrap_or("")
        ))
    });
    drop(run);
    cases.finish();
}

#[test]
fn an_impossible_kv_cache_names_the_root_cause() {
    let Some(tier) = Tier::find("an_impossible_kv_cache_names_the_root_cause", 1) else {
        return;
    };
    // 100 000 GiB of KV cache: vLLM's CPU worker refuses it with a ValueError logged on its
    // stdout; what reaches stderr only says "Engine core initialization failed".
    let models = vec![tier.spec(
        "tiny-llama-b",
        "b",
        Some(1),
        "",
        json!({"env": {"VLLM_CPU_KVCACHE_SPACE": "100000"}}),
    )];
    // No restarts: the message, not the restart policy, is under test here.
    let mut run = tier.start(
        "kv-cache",
        &models,
        &[("MODELMUX_MAX_RESTARTS", "0")],
        false,
    );
    let mut cases = Cases::new("an_impossible_kv_cache_names_the_root_cause");
    cases.run("an impossible KV cache: the ValueError is in the failure message", || {
        let code = run.wait_exit(READY_TIMEOUT)?;
        ensure!(code == Some(1), "exit status {code:?}; log tail:\n{}", run.log_tail(20));
        let root = "less than requested memory for kv";
        let mentions = run.own_mentions(root);
        let with_error = mentions.iter().any(|r| r.message().contains("ValueError"));
        ensure!(
            with_error,
            "no message of modelmux's own names the root cause (ValueError ... {root:?}); its error lines:\n{}",
            lines(&run.records().into_iter().filter(|r| !r.is_engine_output() && r.level() == "ERROR").collect::<Vec<_>>())
        );
        let line = mentions[0]
            .message()
            .lines()
            .find(|l| l.contains(root))
            .unwrap_or("")
            .trim()
            .to_string();
        Ok(format!("exit 1; message has: {line}"))
    });
    drop(run);
    cases.finish();
}
