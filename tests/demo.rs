//! `scripts/demo.sh` (what `make demo` runs) on a terminal: one Ctrl-C stops modelmux
//! cleanly and the script exits 0. The terminal is a pseudo-terminal driven by Python's
//! `pty` module, so the Ctrl-C goes through the terminal's line discipline as a person's
//! would (SIGINT to the foreground process group).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{port_block, tools, wait_until};

/// Runs argv[1:] on a new pseudo-terminal, types Ctrl-C once the output shows `PROMPT`,
/// and prints {"exit": code, "output": text} when it ends (or after 120 s).
const DRIVER: &str = r#"
import json, os, pty, select, signal, sys, time
prompt = os.environ["PROMPT"].encode()
pid, fd = pty.fork()
if pid == 0:
    # A person's terminal delivers Ctrl-C: undo an ignored SIGINT inherited from whatever
    # ran the tests in the background (ignored signals survive exec, and bash cannot trap them).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    os.execvp(sys.argv[1], sys.argv[1:])
out, sent, deadline = b"", False, time.time() + 120
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    # Ctrl-C once the log follower prints (it owns the terminal by then; a Ctrl-C before
    # that would reach the script, which ignores it, as a person's early Ctrl-C would).
    if not sent and prompt in out and b"configuration read" in out.split(prompt, 1)[1]:
        os.write(fd, b"\x03")
        sent = True
else:
    os.killpg(pid, 9)
_, status = os.waitpid(pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "sent": sent,
                  "output": out.decode(errors="replace")}))
"#;

/// Pids of live processes whose environment holds `marker` (this test's own only).
fn marked(marker: &str) -> Vec<i32> {
    let needle = marker.as_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle))
        })
        .filter(|pid| common::alive(*pid as u32))
        .collect()
}

#[test]
fn one_ctrl_c_in_the_demo_on_a_terminal_stops_modelmux_cleanly() {
    let Some(python) = tools::require(
        tools::python_with("pty"),
        "one_ctrl_c_in_the_demo_on_a_terminal_stops_modelmux_cleanly",
        "no python3",
    ) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = Path::new(common::MODELMUX).parent().unwrap();
    // Engine ports follow PORT (PORT+1, PORT+2): a block of free ports, not one.
    let port = port_block();
    let marker = format!("MODELMUX_TEST_DEMO={}-{port}", std::process::id());
    let (key, value) = marker.split_once('=').unwrap();
    let out = Command::new(python)
        .args(["-c", DRIVER, "bash"])
        .arg(root.join("scripts/demo.sh"))
        .env("PROMPT", "Ctrl-C to stop")
        .env("BIN", bin)
        .env("PORT", port.to_string())
        .env(key, value)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the pty driver");
    let leftovers = marked(&marker);
    for pid in &leftovers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "driver output ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let output = result["output"].as_str().unwrap();
    assert_eq!(result["sent"], true, "never saw the prompt:\n{output}");
    assert_eq!(result["exit"], 0, "the demo's exit status:\n{output}");
    assert!(output.contains("clean shutdown"), "{output}");
    assert!(output.contains("modelmux exited with status 0"), "{output}");
    assert!(!output.contains("second signal"), "{output}");
    // Pasteable commands: the JSON bodies are quoted.
    assert!(
        output.contains(&format!(
            "$ curl -sS http://127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' -d '{{\"model\": \"chat\""
        )),
        "{output}"
    );
    assert!(leftovers.is_empty(), "processes left behind: {leftovers:?}");
    wait_until(Duration::from_secs(5), "the demo's port free", || {
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
    });
}
