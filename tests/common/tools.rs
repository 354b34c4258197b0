//! External tools some tests need: a Python with `prometheus_client`, Debian's `chromium`
//! and `chromium-driver`. `.ci/run` installs them. Under plain `cargo test` a missing tool
//! skips the test with a printed reason; with `MODELMUX_CI=1` (set by `.ci/run`) it fails
//! it, so that CI never passes by skipping.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `Some(tool)`, or `None` after printing why the test is skipped (a panic under CI).
pub fn require<T>(tool: Option<T>, test: &str, missing: &str) -> Option<T> {
    if tool.is_none() {
        if std::env::var_os("MODELMUX_CI").is_some_and(|v| v == "1") {
            panic!("{test}: {missing} (MODELMUX_CI=1: CI must install it; see .ci/run)");
        }
        eprintln!("skipped {test}: {missing}; .ci/run installs it");
    }
    tool
}

fn runs(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python that can `import module`: `MODELMUX_TEST_PYTHON`, CI's tool environment
/// (`target/ci-tools`), then `python3`.
pub fn python_with(module: &str) -> Option<PathBuf> {
    let ci_tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-tools/bin/python");
    std::env::var_os("MODELMUX_TEST_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([ci_tools, PathBuf::from("python3")])
        .find(|py| runs(Command::new(py).args(["-c", &format!("import {module}")])))
}

/// Debian's chromium and its chromedriver, when both run.
pub fn chromium() -> Option<(PathBuf, PathBuf)> {
    let browser = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    let driver = PathBuf::from("/usr/bin/chromedriver");
    runs(Command::new(&driver).arg("--version")).then_some((browser, driver))
}
