//! What a new user sees when a configuration is slightly wrong, through the real binary:
//! typos get the nearest known name, `plan` refuses what `serve` would, bytes no process can
//! take are configuration errors, and `--help` shows defaults and examples.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output};

use common::{MOCK, MODELMUX};

fn run(args: &[&OsStr], env: &[(&str, &OsStr)]) -> Output {
    let mut cmd = Command::new(MODELMUX);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MODELMUX_GPUS", "none")
        .env("MODELMUX_ENGINE_CMD", MOCK);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run modelmux")
}

fn plan(config: &str) -> Output {
    run(
        &["plan".as_ref()],
        &[("MULTI_MODEL_CONFIG", config.as_ref())],
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn typos_in_keys_and_values_are_warned_about_with_the_nearest_known_name() {
    let out = plan(
        r#"{"models": [{"model_path": "org/a", "parms": "--served-model-name a",
                        "model_task": "embedding"}]}"#,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(r#"models[0]: unknown key "parms" is ignored; did you mean "params"?"#),
        "{err}"
    );
    assert!(
        err.contains(
            r#"models[0].model_task: unknown task "embedding"; did you mean "text_embedding"?"#
        ),
        "{err}"
    );
}

#[test]
fn plan_refuses_a_missing_engine_program_like_serve() {
    for command in ["plan", "serve"] {
        let out = run(
            &[command.as_ref()],
            &[
                (
                    "MULTI_MODEL_CONFIG",
                    r#"{"models": [{"model_path": "org/a"}]}"#.as_ref(),
                ),
                ("MODELMUX_ENGINE_CMD", "/nonexistent/vllm --flag".as_ref()),
                ("PORT", common::free_port().to_string().as_ref()),
            ],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {err}");
        assert!(
            err.contains(r#"MODELMUX_ENGINE_CMD="/nonexistent/vllm": the engine program"#),
            "{command}: {err}"
        );
    }
}

#[test]
fn a_nul_byte_in_params_or_an_env_key_is_a_configuration_error() {
    let cases = [
        (
            r#"{"models": [{"model_path": "org/a", "params": "--served-model-name a\u0000b"}]}"#,
            "models[0].params: contains a NUL byte",
        ),
        (
            r#"{"models": [{"model_path": "org/a", "env": {"X\u0000Y": "1"}}]}"#,
            r"models[0].env.X\u0000Y: contains a NUL byte",
        ),
        (
            r#"{"models": [{"model_path": "org/a", "env": {"X": "a\u0000"}}]}"#,
            "models[0].env.X: contains a NUL byte",
        ),
    ];
    for (config, message) in cases {
        let out = plan(config);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{config}: {err}");
        assert!(err.contains(message), "{config}: {err}");
    }
}

#[test]
fn invalid_utf8_names_the_variable_or_the_flag() {
    let bad = OsStr::from_bytes(b"80\xff");
    let out = run(&["plan".as_ref()], &[("PORT", bad)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid configuration: PORT=\"80\u{fffd}\": is not valid UTF-8"),
        "{}",
        stderr(&out)
    );
    let out = run(&["plan".as_ref(), "--vllm-params".as_ref(), bad], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--vllm-params=\"80\u{fffd}\": is not valid UTF-8"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_file_winning_over_multi_model_config_is_said_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.json");
    std::fs::write(&file, r#"{"models": [{"model_path": "org/a"}]}"#).unwrap();
    let out = run(
        &["--config".as_ref(), file.as_os_str(), "plan".as_ref()],
        &[(
            "MULTI_MODEL_CONFIG",
            r#"{"models": [{"model_path": "org/b"}]}"#.as_ref(),
        )],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("the models come from --config; MULTI_MODEL_CONFIG is also set and ignored"),
        "{err}"
    );
}

#[test]
fn help_shows_defaults_and_examples() {
    let out = run(&["--help".as_ref()], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "(default 8080)",
        "(default /opt/ds/model/deployed_model)",
        "(default /v1/completions)",
        "for vLLM `vllm serve`)",
        "(default 1800)",
        "Examples:",
        "modelmux --config models.json plan",
        "status page at /",
    ] {
        assert!(help.contains(expected), "{expected} missing from:\n{help}");
    }
}

#[test]
fn an_error_about_a_model_entry_names_where_the_entries_came_from() {
    let bad =
        r#"{"models": [{"model_path": "org/a"}, {"model_path": "org/b", "params": "-tp two"}]}"#;
    let wanted = r#"models[1].params: -tp must be a positive integer, got "two""#;
    let out = plan(bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!(
            "invalid configuration: MULTI_MODEL_CONFIG: {wanted}"
        )),
        "{}",
        stderr(&out)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.json");
    std::fs::write(&file, bad).unwrap();
    let out = run(
        &["--config".as_ref(), file.as_os_str(), "plan".as_ref()],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let named = format!(
        "invalid configuration: --config {}: {wanted}",
        file.display()
    );
    assert!(stderr(&out).contains(&named), "{}", stderr(&out));
    // A model's own engine program that is not there: checked before anything starts.
    let out = plan(r#"{"models": [{"model_path": "org/a", "engine_cmd": "/no/such/engine"}]}"#);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid configuration: MULTI_MODEL_CONFIG: models[0].engine_cmd"),
        "{}",
        stderr(&out)
    );
    // A model folder without weights: found by the planner, named the same way.
    let empty = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"models": [{{"model_path": "{}"}}]}}"#,
        empty.path().display()
    );
    let out = run(
        &["plan".as_ref()],
        &[
            ("MULTI_MODEL_CONFIG", config.as_ref()),
            ("MODELMUX_GPUS", "1x80GiB".as_ref()),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid configuration: MULTI_MODEL_CONFIG: models[0].model_path: "),
        "{}",
        stderr(&out)
    );
}
