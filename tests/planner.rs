//! GPU memory planning through the real binary (SPEC §3.1): estimates from fake model
//! directories (real config.json shapes and tensor lists over sparse files), shares, the
//! refusal, staged start with mock-vllm, and every bad input as one line before anything
//! starts.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{MOCK, Setup, wait_until};
use modelmux::weights::fixtures::{LLAMA_3_8B, MISTRAL_7B_V03, QWEN2_0_5B, QWEN2_72B};
use serde_json::{Value, json};

const GIB: f64 = (1u64 << 30) as f64;

use common::planning::{argv, config, models, plan_json};
use common::run_clean as run;

#[test]
fn models_share_a_gpu_with_shares_estimates_and_start_order() {
    let root = models(&[
        ("small-a", QWEN2_0_5B, 1),
        ("small-b", QWEN2_0_5B, 2),
        ("llama", LLAMA_3_8B, 4),
    ]);
    let cfg = config(&[
        ("small-a", "--served-model-name a"),
        ("small-b", "--served-model-name b --max-model-len 8192"),
        ("llama", "--served-model-name llama"),
    ]);
    let plan = plan_json(root.path(), &cfg, "0:24GiB,1:24GiB");
    let (a, b, llama) = (&plan["models"][0], &plan["models"][1], &plan["models"][2]);
    // The largest goes first onto GPU 0 alone; the two small ones share GPU 1.
    assert_eq!(llama["gpus"], json!(["0"]));
    assert_eq!(llama["gpu_share"], Value::Null);
    assert!(!argv(llama).contains(&"--gpu-memory-utilization".to_string()));
    assert_eq!(a["gpus"], json!(["1"]));
    assert_eq!(b["gpus"], json!(["1"]));
    let (sa, sb) = (
        a["gpu_share"].as_f64().unwrap(),
        b["gpu_share"].as_f64().unwrap(),
    );
    assert!(sa > 0.0 && sb > 0.0 && sa + sb <= 0.92, "{sa} + {sb}");
    // Proportional to need: b keeps a shorter context, so less KV cache and a smaller share.
    assert!(sb < sa, "{sa} {sb}");
    for (m, share) in [(a, sa), (b, sb)] {
        let args = argv(m);
        let at = args
            .iter()
            .position(|x| x == "--gpu-memory-utilization")
            .expect("share flag");
        assert_eq!(args[at + 1].parse::<f64>().unwrap(), share);
    }
    // Engines on one GPU start one after another, in configuration order.
    assert_eq!(a["start_after"], json!([]));
    assert_eq!(b["start_after"], json!(["a"]));
    assert_eq!(llama["start_after"], json!([]));
    // The estimate: weights from the headers, KV cache for one max_model_len sequence.
    let e = &llama["memory_estimate"];
    assert_eq!(e["weights_bytes"], 16_060_522_496u64);
    assert_eq!(e["kv_cache_bytes"], 1u64 << 30);
    assert_eq!(e["max_model_len"], 8192);
    let sum = ["weights_bytes", "kv_cache_bytes", "overhead_bytes"]
        .iter()
        .map(|k| e[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(e["total_bytes"].as_u64().unwrap(), sum);
    // The per-GPU table.
    let gpu1 = &plan["gpus"][1];
    assert_eq!(gpu1["memory_total"], 24u64 << 30);
    assert_eq!(gpu1["models"][0]["name"], "a");
    assert_eq!(gpu1["models"][1]["name"], "b");
    assert!(gpu1["planned_bytes"].as_f64().unwrap() <= 0.92 * 24.0 * GIB);
}

#[test]
fn plan_and_gpus_print_the_per_gpu_table() {
    let root = models(&[("x", QWEN2_0_5B, 1), ("y", QWEN2_0_5B, 1)]);
    let cfg = config(&[
        ("x", "--served-model-name x"),
        ("y", "--served-model-name y"),
    ]);
    let rootpath = root.path().to_string_lossy().into_owned();
    let env = [
        ("MULTI_MODEL_CONFIG", cfg.as_str()),
        ("MODELMUX_GPUS", "1x24GiB"),
        ("MODELMUX_MODEL_ROOT", rootpath.as_str()),
    ];
    let out = run(&["plan"], &env);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("GPU memory (MODELMUX_GPU_MEMORY_LIMIT=0.92):"),
        "{text}"
    );
    assert!(text.contains("x (share 0."), "{text}");
    assert!(text.contains("  starts after: x (shared GPU)"), "{text}");
    assert!(text.contains("  memory:       "), "{text}");
    let out = run(&["gpus"], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("1 GPU(s) from MODELMUX_GPUS"), "{text}");
    assert!(
        text.contains("as planned for the configured models:"),
        "{text}"
    );
    assert!(text.contains("y (share 0."), "{text}");
    let out = run(&["gpus", "--json"], &env);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["gpus"][0]["memory_total"], 24u64 << 30);
    assert_eq!(doc["plan"]["gpus"][0]["models"][1]["name"], "y");
}

#[test]
fn a_model_too_big_is_refused_and_tensor_parallelism_fixes_it() {
    let root = models(&[("qwen72", QWEN2_72B, 37)]);
    let rootpath = root.path().to_string_lossy().into_owned();
    for cmd in ["plan", "serve"] {
        let out = run(
            &[cmd],
            &[
                (
                    "MULTI_MODEL_CONFIG",
                    &config(&[("qwen72", "--served-model-name qwen72")]),
                ),
                ("MODELMUX_GPUS", "2x80GiB"),
                ("MODELMUX_MODEL_ROOT", &rootpath),
                ("MODELMUX_ENGINE_CMD", MOCK),
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        for part in [
            // The need is the estimate the models list shows, split at vLLM's utilization.
            "the models do not fit in GPU memory: qwen72 needs 147.9 GiB per GPU: 146.9 within \
             vLLM's utilization 0.9 + 1.0 GiB of CUDA context and graphs outside it, but 0.9 of \
             GPU 0 (80.0 GiB) allows 72.0 GiB",
            "models: qwen72 on 1 GPU: 147.9 GiB (weights 135.4 GiB, KV cache 10.0 GiB for 32768 tokens, overhead 2.5 GiB)",
            "GPUs: 0 80.0 GiB, 1 80.0 GiB",
            "fix: -tp N in qwen72's params to split it over N GPUs, a smaller --max-model-len in \
             qwen72's params (less KV cache) or a shape with bigger GPUs",
        ] {
            assert!(errors[0].contains(part), "{part}: {}", errors[0]);
        }
        assert!(!stderr.contains("engine started"), "{stderr}");
    }
    let plan = plan_json(
        root.path(),
        &config(&[("qwen72", "--served-model-name qwen72 -tp 4")]),
        "4x80GiB",
    );
    let m = &plan["models"][0];
    assert_eq!(m["gpus"], json!(["0", "1", "2", "3"]));
    assert_eq!(m["gpu_share"], Value::Null);
    assert_eq!(m["memory_estimate"]["gpus"], 4);
}

/// The review's case: a `-tp` model that takes every GPU beside a model that could share
/// one. The refusal named neither every model nor the flag to lower.
#[test]
fn too_few_gpus_for_a_tp_model_and_another_names_every_model_and_gpu() {
    let root = models(&[("llama", LLAMA_3_8B, 4), ("small", QWEN2_0_5B, 1)]);
    let cfg = config(&[
        ("llama", "--served-model-name llama -tp 2"),
        ("small", "--served-model-name small"),
    ]);
    let rootpath = root.path().to_string_lossy();
    for (gpus, supply, sizes) in [
        ("2x24GiB", "2 are", "GPUs: 0 24.0 GiB, 1 24.0 GiB;"),
        ("1x80GiB", "1 is", "GPUs: 0 80.0 GiB;"),
    ] {
        let env = [
            ("MULTI_MODEL_CONFIG", cfg.as_str()),
            ("MODELMUX_GPUS", gpus),
            ("MODELMUX_MODEL_ROOT", &rootpath),
        ];
        let out = run(&["plan"], &env);
        assert_eq!(out.status.code(), Some(2), "{gpus}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        for part in [
            &format!(
                "the models need at least 3 GPUs but {supply} available: 2 whole GPUs for llama and 1 for small to share; models: "
            ),
            "llama on 2 GPUs (-tp 2): 24.5 GiB (weights 15.0 GiB, KV cache 1.0 GiB for 8192 tokens, overhead 8.5 GiB, 12.2 GiB per GPU on 2 GPUs), \
             small on 1 GPU: 3.8 GiB (weights 0.9 GiB, KV cache 0.4 GiB for 32768 tokens, overhead 2.5 GiB); ",
            sizes,
            "fix: lower llama's -tp 2, serve fewer models or a shape with more GPUs",
        ] {
            assert!(errors[0].contains(part), "{part}: {}", errors[0]);
        }
    }
}

#[test]
fn a_users_own_share_is_kept_and_counted() {
    let root = models(&[("a", MISTRAL_7B_V03, 3), ("b", QWEN2_0_5B, 1)]);
    let cfg = config(&[
        (
            "a",
            "--served-model-name a --max-model-len 4096 --gpu-memory-utilization 0.7",
        ),
        ("b", "--served-model-name b"),
    ]);
    let plan = plan_json(root.path(), &cfg, "1x48GiB");
    let (a, b) = (&plan["models"][0], &plan["models"][1]);
    assert_eq!(a["gpu_share"], 0.7);
    let args = argv(a);
    assert_eq!(
        args.iter()
            .filter(|x| *x == "--gpu-memory-utilization")
            .count(),
        1,
        "{args:?}"
    );
    assert!(args.contains(&"0.7".to_string()));
    let sb = b["gpu_share"].as_f64().unwrap();
    assert!(0.7 + sb <= 0.92, "{sb}");
    // A limit of 0.8 leaves b no room beside a's 0.7: refused.
    let out = run(
        &["plan"],
        &[
            ("MULTI_MODEL_CONFIG", &cfg),
            ("MODELMUX_GPUS", "1x48GiB"),
            ("MODELMUX_GPU_MEMORY_LIMIT", "0.8"),
            ("MODELMUX_MODEL_ROOT", &root.path().to_string_lossy()),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MODELMUX_GPU_MEMORY_LIMIT=0.8"));
}

/// Every bad input of issue 11: exit 2, one error line naming the file or variable, for both
/// `plan` and `serve`, and `serve` starts no engine.
#[test]
fn bad_inputs_are_one_line_and_start_nothing() {
    let root = models(&[
        ("ok", QWEN2_0_5B, 1),
        ("no-config", QWEN2_0_5B, 1),
        ("dir-config", QWEN2_0_5B, 1),
        ("short", QWEN2_0_5B, 1),
        ("huge", QWEN2_0_5B, 1),
    ]);
    let r = root.path();
    std::fs::remove_file(r.join("no-config/config.json")).unwrap();
    std::fs::remove_file(r.join("dir-config/config.json")).unwrap();
    std::fs::create_dir(r.join("dir-config/config.json")).unwrap();
    let mut short = 1_000_000u64.to_le_bytes().to_vec();
    short.extend_from_slice(b"{\"model.embed");
    std::fs::write(r.join("short/model.safetensors"), short).unwrap();
    let huge = br#"{"w":{"dtype":"F32","shape":[1000000000,1000000],"data_offsets":[0,4000000000000000]}}"#;
    let mut bytes = (huge.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(huge);
    std::fs::write(r.join("huge/model.safetensors"), bytes).unwrap();
    let file = |p: &str| r.join(p).to_string_lossy().into_owned();
    let events = r.join("events");
    // (MULTI_MODEL_CONFIG, variables to change, what the error line says)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        (config(&[("no-config", "")]), vec![], format!("models[0].model_path: {}: missing", file("no-config/config.json"))),
        (config(&[("dir-config", "")]), vec![], format!("models[0].model_path: {}: cannot read it", file("dir-config/config.json"))),
        (config(&[("short", "")]), vec![], format!("models[0].model_path: {}: truncated: the header claims 1000000 bytes", file("short/model.safetensors"))),
        (config(&[("huge", "")]), vec![], format!("models[0].model_path: {}: the header declares 3.6 PiB of tensors", file("huge/model.safetensors"))),
        (config(&[("ok", "--gpu-memory-utilization 1.5")]), vec![], "models[0].params: --gpu-memory-utilization must be a fraction above 0 and at most 1, got \"1.5\"".into()),
        (config(&[("ok", "--gpu-memory-utilization=-0.5")]), vec![], "models[0].params: --gpu-memory-utilization must be a fraction above 0 and at most 1, got \"-0.5\"".into()),
        (config(&[("ok", "")]), vec![("MODELMUX_GPUS", "4x80")], "MODELMUX_GPUS=\"4x80\": size \"80\" has no unit".into()),
        (config(&[("ok", "")]), vec![("MODELMUX_GPUS", "0:24GiB,1:lots")], "MODELMUX_GPUS=\"0:24GiB,1:lots\": size \"lots\"".into()),
        (config(&[("ok", "")]), vec![("MODELMUX_GPU_MEMORY_LIMIT", "1.2")], "MODELMUX_GPU_MEMORY_LIMIT=\"1.2\": must be a fraction above 0 and at most 1".into()),
    ];
    for (cfg, extra, expected) in &cases {
        for cmd in ["plan", "serve"] {
            let mut env: Vec<(&str, String)> = vec![
                ("MULTI_MODEL_CONFIG", cfg.clone()),
                ("MODELMUX_GPUS", "2x24GiB".into()),
                ("MODELMUX_MODEL_ROOT", r.to_string_lossy().into_owned()),
                ("MODELMUX_ENGINE_CMD", MOCK.into()),
                ("MOCK_EVENTS_FILE", events.to_string_lossy().into_owned()),
            ];
            for (k, v) in extra {
                env.retain(|(key, _)| key != k);
                env.push((k, v.to_string()));
            }
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let out = run(&[cmd], &env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {expected}: {stderr}");
            let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
            assert_eq!(errors.len(), 1, "{cmd}: one error line: {stderr}");
            assert!(
                errors[0].contains(expected.as_str()),
                "{cmd}: {:?} should contain {expected:?}",
                errors[0]
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    assert!(!events.exists(), "no engine was ever started");
}

fn health(m: &common::Modelmux) -> Value {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", m.port)) else {
        return Value::Null;
    };
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    serde_json::from_str(buf.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or(Value::Null)
}

fn staged_setup(root: &Path, reports: &Path, first_env: Value) -> Setup {
    let path = |n: &str| root.join(n).to_string_lossy().into_owned();
    let report = |n: &str| {
        reports
            .join(format!("{n}.json"))
            .to_string_lossy()
            .into_owned()
    };
    let mut a_env = json!({"MOCK_STARTUP_DELAY_MS": "1500", "MOCK_REPORT_FILE": report("a")});
    for (k, v) in first_env.as_object().unwrap() {
        a_env[k] = v.clone();
    }
    let mut s = Setup::new(&[
        ("a", json!({"env": a_env})),
        ("b", json!({"env": {"MOCK_REPORT_FILE": report("b")}})),
        (
            "big",
            json!({"env": {"MOCK_STARTUP_DELAY_MS": "1500", "MOCK_REPORT_FILE": report("big")}}),
        ),
    ]);
    s.models[0]["model_path"] = json!(path("a"));
    s.models[1]["model_path"] = json!(path("b"));
    s.models[2]["model_path"] = json!(path("big"));
    s.models[2]["params"] = json!("--served-model-name big --max-model-len 4096");
    s.env("MODELMUX_GPUS", "2x24GiB")
}

fn started_at(report: &Value, delay_s: f64) -> f64 {
    report["ready_unix"].as_f64().unwrap() - delay_s
}

#[test]
fn engines_sharing_a_gpu_start_one_after_another() {
    let root = models(&[
        ("a", QWEN2_0_5B, 1),
        ("b", QWEN2_0_5B, 1),
        ("big", MISTRAL_7B_V03, 3),
    ]);
    let reports = tempfile::tempdir().unwrap();
    let m = staged_setup(root.path(), reports.path(), json!({})).start();
    // While a loads, b waits on the GPU they share (with its share shown); big, alone on the
    // other GPU, loads at the same time as a.
    wait_until(Duration::from_secs(20), "b waiting while a starts", || {
        let h = health(&m);
        h["models"][0]["state"] == "starting" && h["models"][1]["state"] == "waiting"
    });
    let h = health(&m);
    assert!(h["models"][1]["gpu_share"].as_f64().unwrap() > 0.0, "{h}");
    assert_eq!(h["models"][1]["start_after"], json!(["a"]));
    assert_eq!(h["models"][2]["gpu_share"], Value::Null);
    m.wait_ready(Duration::from_secs(30));
    let a = common::report(&reports.path().join("a.json"));
    let b = common::report(&reports.path().join("b.json"));
    let big = common::report(&reports.path().join("big.json"));
    let a_ready = a["ready_unix"].as_f64().unwrap();
    assert!(
        started_at(&b, 0.0) >= a_ready,
        "b started before a was ready: {b} {a}"
    );
    assert!(
        started_at(&big, 1.5) < a_ready,
        "big waited for a: {big} {a}"
    );
    assert_eq!(a["cuda_visible_devices"], b["cuda_visible_devices"]);
    assert_ne!(a["cuda_visible_devices"], big["cuda_visible_devices"]);
    let b_argv: Vec<String> = serde_json::from_value(b["argv"].clone()).unwrap();
    assert!(
        b_argv.contains(&"--gpu-memory-utilization".to_string()),
        "{b_argv:?}"
    );
    assert!(m.log().contains("waiting for a to be ready"), "{}", m.log());
}

#[test]
fn a_failed_predecessor_lets_the_next_one_start() {
    let root = models(&[
        ("a", QWEN2_0_5B, 1),
        ("b", QWEN2_0_5B, 1),
        ("big", MISTRAL_7B_V03, 3),
    ]);
    let reports = tempfile::tempdir().unwrap();
    let m = staged_setup(
        root.path(),
        reports.path(),
        json!({"MOCK_CRASH_AT_START": "CUDA out of memory"}),
    )
    .env("MODELMUX_ON_FAILURE", "degrade")
    .env("MODELMUX_MAX_RESTARTS", "0")
    .start();
    wait_until(Duration::from_secs(30), "b ready after a failed", || {
        let h = health(&m);
        h["models"][0]["state"] == "failed" && h["models"][1]["state"] == "ready"
    });
    assert!(m.log().contains("a failed; starting anyway"), "{}", m.log());
}

#[test]
fn sizes_in_the_override_parse_and_show_in_gpus() {
    let out = run(
        &["gpus", "--json"],
        &[("MODELMUX_GPUS", "GPU-a:80GiB,GPU-b:40GiB")],
    );
    assert_eq!(out.status.code(), Some(0));
    let inv: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inv["gpus"][1]["visible_id"], "GPU-b");
    assert_eq!(inv["gpus"][1]["memory_total"], 40u64 << 30);
    assert_eq!(inv["plan"], Value::Null, "no models configured");
    let text = run(&["gpus"], &[("MODELMUX_GPUS", "4x80GiB")]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("80.0 GiB total"));
}
