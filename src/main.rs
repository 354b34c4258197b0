//! The `modelmux` binary: everything lives in the library; see `src/lib.rs`.

fn main() -> std::process::ExitCode {
    // An engine's guardian is this binary in a hidden mode (see supervisor::guardian).
    if let Some(code) = modelmux::supervisor::guardian::main_if_guardian() {
        return code;
    }
    modelmux::cli::main()
}
