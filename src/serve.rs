//! `modelmux serve`: plan, start the supervisor and the front, wait for a signal or a fatal
//! failure, shut down in order.

use std::process::ExitCode;

use crate::config::RawConfig;

/// Runs `serve` to completion and returns the process exit code.
pub fn main(raw: &RawConfig) -> ExitCode {
    let _ = raw;
    ExitCode::SUCCESS
}
