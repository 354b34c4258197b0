//! Tests of the engine log handling: levels, messages, the tail and the pump.

use super::*;
use std::time::Duration;

fn levels(lines: &[&str]) -> Vec<Level> {
    let mut c = Classifier::default();
    lines.iter().map(|l| c.classify(l)).collect()
}

#[test]
fn vllm_and_uvicorn_lines_keep_their_level() {
    use Level::*;
    assert_eq!(
        levels(&[
            "INFO 01-15 10:23:45 [api_server.py:1] Starting vLLM API server",
            "(APIServer pid=42) WARNING 01-15 10:23:45 [arg_utils.py:9] deprecated",
            "(EngineCore_0 pid=43) ERROR 01-15 10:23:46 [core.py:700] EngineCore failed to start.",
            "(APIServer pid=42) INFO:     127.0.0.1:5000 - \"GET /health HTTP/1.1\" 200 OK",
            "INFO:     127.0.0.1:5000 - \"POST /v1/completions HTTP/1.1\" 200 OK",
            "WARNING:root:something odd",
            "2024-05-01T10:00:00.000Z ERROR text_generation_launcher: shard failed",
            "ERRORS are plain words here",
        ]),
        [Info, Warn, Error, Debug, Info, Warn, Error, Info]
    );
}

#[test]
fn tracebacks_without_a_prefix_are_errors() {
    use Level::*;
    assert_eq!(
        levels(&[
            "Loading weights",
            "  indented after info stays info",
            "Traceback (most recent call last):",
            "  File \"x.py\", line 1, in <module>",
            "ValueError: Available memory 1.0 GiB is less than requested memory for kv cache",
            "The above exception was the direct cause of the following exception:",
            "RuntimeError: Engine core initialization failed. See root cause above.",
            "/usr/lib/python3/x.py:12: FutureWarning: going away",
            "api_server.py: error: unrecognized arguments: --no-such-flag",
        ]),
        [Info, Info, Error, Error, Error, Error, Error, Warn, Error]
    );
}

#[test]
fn messages_lose_their_prefixes() {
    assert_eq!(
        message("(EngineCore_0 pid=43) ERROR 01-15 10:23:46 [core.py:700] ValueError: x"),
        "ValueError: x"
    );
    assert_eq!(message("INFO:     Started server"), "Started server");
    assert_eq!(message("  plain  "), "plain");
    assert!(is_exception("torch.OutOfMemoryError: CUDA out of memory"));
    assert!(is_exception("KeyboardInterrupt"));
    assert!(!is_exception("Error loading: x y"));
    assert!(!is_exception("see ValueError: x"));
}

#[test]
fn the_root_cause_is_the_first_real_exception_of_either_stream() {
    let tail = Tail::default();
    let mut streams = [Classifier::default(), Classifier::default()];
    for (stream, line) in [
        (0, "INFO 01-15 10:00:00 [core.py:1] loading"),
        (
            0,
            "(EngineCore_0 pid=9) ERROR 01-15 10:00:01 [core.py:2] Traceback (most recent call last):",
        ),
        (
            0,
            "(EngineCore_0 pid=9) ERROR 01-15 10:00:01 [core.py:2] ValueError: Available memory is less than requested memory for kv cache",
        ),
        (1, "Traceback (most recent call last):"),
        (
            1,
            "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
        ),
    ] {
        let level = streams[stream].classify(line);
        tail.push(level, line);
    }
    let x = tail.excerpt(10, 10);
    assert_eq!(
        x.root_cause.as_deref(),
        Some("ValueError: Available memory is less than requested memory for kv cache")
    );
    // Traceback headers are not repeated; the two exceptions are.
    assert_eq!(x.error_lines.len(), 2, "{:?}", x.error_lines);
    assert_eq!(x.other_lines, ["INFO 01-15 10:00:00 [core.py:1] loading"]);
}

#[test]
fn a_long_traceback_does_not_push_out_the_root_cause() {
    // As vLLM 0.32 on the CPU fails an impossible KV cache: the worker's ValueError,
    // then long chained tracebacks in every process, on both streams.
    let tail = Tail::default();
    let mut c = Classifier::default();
    let w = "(Worker pid=1781) ERROR 11-27 09:17:50 [multiproc_executor.py:1063]";
    let e = "(EngineCore pid=1569) ERROR 11-27 09:17:50 [core.py:1510]";
    let root = "ValueError: Available memory on node 0 (16.55/22.71 GiB) on kv cache allocation is less than requested memory for kv (100000.0 GiB).";
    let mut lines = vec![format!("{w} Traceback (most recent call last):")];
    lines.push(format!("{w}     raise ValueError("));
    lines.push(format!("{w} {root}"));
    lines.push(format!("{w} {root}"));
    for i in 0..300 {
        lines.push(format!("{e}   File \"x.py\", line {i}, in f"));
        lines.push(format!("{e}     ^^^^^^^^^^"));
    }
    let worker = format!("RuntimeError: Worker failed with error '{root}'");
    lines.push(format!("{e} {worker}"));
    lines.push(worker.clone());
    lines.push("RuntimeError: Engine core initialization failed. See root cause above.".into());
    for line in &lines {
        tail.push(c.classify(line), line);
    }
    let x = tail.excerpt(12, 5);
    assert_eq!(x.root_cause.as_deref(), Some(root));
    assert_eq!(x.error_lines.len(), 3, "{:#?}", x.error_lines);
    assert!(x.error_lines[0].ends_with(root));
    assert!(x.error_lines[1].ends_with(&worker));
    assert!(x.error_lines[2].contains("See root cause above"));
}

#[test]
fn argparse_errors_are_the_root_cause_of_a_usage_error() {
    let tail = Tail::default();
    let mut c = Classifier::default();
    for line in [
        "usage: api_server.py [-h] [--host HOST]",
        "api_server.py: error: unrecognized arguments: --no-such-flag",
    ] {
        tail.push(c.classify(line), line);
    }
    assert_eq!(
        tail.excerpt(5, 5).root_cause.as_deref(),
        Some("api_server.py: error: unrecognized arguments: --no-such-flag")
    );
}

#[test]
fn the_last_line_is_the_message_or_a_redrawn_bar() {
    let tail = Tail::default();
    assert_eq!(tail.last_line(), None);
    tail.push(
        Level::Info,
        "(APIServer pid=42) INFO 01-15 10:23:45 [loader.py:12] Starting to load model m...",
    );
    assert_eq!(
        tail.last_line().as_deref(),
        Some("Starting to load model m...")
    );
    tail.set_live("  Loading safetensors checkpoint shards:  50% Completed | 1/2  ");
    assert_eq!(
        tail.last_line().as_deref(),
        Some("Loading safetensors checkpoint shards:  50% Completed | 1/2")
    );
    // A live state is shown, never kept as a line of output.
    assert_eq!(tail.excerpt(5, 5).other_lines.len(), 1);
    tail.push(Level::Info, &"x".repeat(1000));
    let long = tail.last_line().unwrap();
    assert_eq!(long.len(), MAX_LAST + 4);
    assert!(long.ends_with(" ..."));
    tail.clear();
    assert_eq!(tail.last_line(), None);
}

#[test]
fn redrawn_lines_keep_their_last_state_within_the_cap() {
    assert_eq!(last_state("\rbar 0%\rbar 50%\rbar 100%\n"), "bar 100%");
    assert_eq!(last_state("bar 50%\r   \r"), "bar 50%");
    assert_eq!(last_state("plain line\r\n"), "plain line");
    let mut line = Vec::new();
    for i in 0..5000 {
        append_capped(&mut line, format!("\rbar {i:>5}").as_bytes());
        assert!(line.len() <= MAX_LINE + 16);
    }
    assert_eq!(last_state(&String::from_utf8_lossy(&line)), "bar  4999");
    let mut plain = Vec::new();
    for _ in 0..100 {
        append_capped(&mut plain, &[b'y'; 1000]);
    }
    assert_eq!(plain.len(), MAX_LINE);
}

#[tokio::test]
async fn a_bar_that_has_not_reached_its_newline_is_the_last_line() {
    use tokio::io::AsyncWriteExt;
    let (mut writer, reader) = tokio::io::duplex(1024);
    let tail = Tail::default();
    let pumping = pump("m".into(), Stream::Stderr, reader, tail.clone());
    let wait_for = |want: &'static str| {
        let tail = tail.clone();
        async move {
            for _ in 0..500 {
                if tail.last_line().as_deref() == Some(want) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("last line {:?}, not {want:?}", tail.last_line());
        }
    };
    writer
        .write_all(b"INFO 01-15 10:23:45 [a.py:1] loading\n")
        .await
        .unwrap();
    wait_for("loading").await;
    writer.write_all(b"\rshards:   0% | 0/2").await.unwrap();
    wait_for("shards:   0% | 0/2").await;
    writer.write_all(b"\rshards:  50% | 1/2").await.unwrap();
    wait_for("shards:  50% | 1/2").await;
    writer.write_all(b"\rshards: 100% | 2/2\n").await.unwrap();
    wait_for("shards: 100% | 2/2").await;
    drop(writer);
    pumping.await.unwrap();
    // Logged and kept once, in its final state.
    assert_eq!(
        tail.excerpt(0, 10).other_lines,
        ["INFO 01-15 10:23:45 [a.py:1] loading", "shards: 100% | 2/2"]
    );
}
