//! The `modelmux` binary: everything lives in the library; see `src/lib.rs`.

fn main() -> std::process::ExitCode {
    modelmux::cli::main()
}

/// mimalloc instead of glibc's malloc: the proxy path allocates small buffers on two
/// threads, where glibc's arenas cost about a tenth of modelmux's CPU (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
