//! `modelmux serve`: plan, start the supervisor and the front, wait for a signal or a fatal
//! failure, shut down in order (front drains, engines get SIGTERM, then SIGKILL).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::admin::live::{Live, Loader};
use crate::admin::{Admin, Runtime};
use crate::config::{OnFailure, RawConfig, Settings};
use crate::front::{self, App};
use crate::plan::LaunchPlan;
use crate::resolve::{EXIT_CONFIG, load_plan};
use crate::state::{Snapshot, StateRx};
use crate::supervisor::{Failure, Reaper, Supervisor, group, progress};

/// Runs `serve` to completion and returns the process exit code.
pub fn main(raw: &RawConfig) -> ExitCode {
    let (config, plan) = match load_plan(raw) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = check_engine_programs(&config) {
        tracing::error!("invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // Memory the plan counts on but someone else holds (a stale engine, another container)
    // fails here in one line, not in an engine's memory profile twenty minutes from now.
    if let Err(e) = crate::gpu::check_free(&plan.gpus, &crate::gpu::NvmlDiscovery) {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }
    // Orphans of engines (say a vLLM worker whose parent died) come back to modelmux and
    // are reaped. As PID 1 they come anyway.
    if nix::unistd::getpid().as_raw() != 1
        && let Err(e) = nix::sys::prctl::set_child_subreaper(true)
    {
        tracing::warn!("cannot become a child subreaper ({e}); orphaned engine workers may linger");
    }
    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(config.settings, plan, reloader(raw.clone())));
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Reads the configuration again for a reload: the `--config` file as it is now, else the
/// environment as modelmux started; the GPUs as discovered again. Every model's engine
/// program (its profile's, or its `engine_cmd`) must exist, as at start.
fn reloader(raw: RawConfig) -> Loader {
    Arc::new(move || {
        let config = crate::config::load(&raw).map_err(|e| e.to_string())?;
        check_engine_programs(&config).map_err(|e| e.to_string())?;
        let inv = crate::gpu::inventory(config.settings.gpus.as_ref(), &crate::gpu::NvmlDiscovery);
        Ok((config, inv))
    })
}

/// SIGHUP does what `POST /admin/reload` does; the outcome goes to the log.
fn reload_on_sighup(live: Arc<Live>) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP; use POST /admin/reload to reload");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reading the configuration again");
            match live.reload().await {
                Ok(r) => tracing::info!(
                    "SIGHUP: reloaded; started [{}], stopped [{}], restarted [{}], unchanged [{}]",
                    r.started.join(", "),
                    r.stopped.join(", "),
                    r.restarted.join(", "),
                    r.unchanged.join(", ")
                ),
                Err(e) => tracing::error!("SIGHUP: reload refused, nothing changed: {e}"),
            }
        }
    });
}

/// Each streamed request holds two sockets (client and engine): lift the soft limit on open
/// files to the hard one, as servers commonly do, so that 1,024 is not the ceiling.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("cannot raise the open-files limit from {soft} to {hard}: {e}");
    }
}

/// Every model's engine program must exist before anything starts: otherwise every model
/// would crash-loop through its restart budget and the real cause would hide in the logs.
pub fn check_engine_programs(
    config: &crate::config::Config,
) -> Result<(), crate::config::ConfigError> {
    for m in &config.models {
        check_engine_program(&m.engine_cmd[0], &m.engine_cmd_origin, m.engine)
            .map_err(|e| e.in_source(&config.source))?;
    }
    Ok(())
}

/// One engine program; `origin` names where its command came from.
fn check_engine_program(
    program: &str,
    origin: &str,
    engine: crate::engines::Engine,
) -> Result<(), crate::config::ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        executable(std::path::Path::new(program))
    } else {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| executable(&dir.join(program)))
        })
    };
    if found {
        Ok(())
    } else {
        Err(crate::config::ConfigError::var(
            origin,
            program,
            format!(
                "the engine program is not an executable file nor found in PATH; install {} \
                 or point MODELMUX_ENGINE_CMD (or the model's engine_cmd) at the engine",
                engine.profile().server
            ),
        ))
    }
}

/// Why serving ended.
enum Outcome {
    Signal(&'static str),
    Failed(Failure),
    FrontDied(String),
}

async fn bind(var: &str, host: IpAddr, port: u16) -> Result<TcpListener, ExitCode> {
    let addr = SocketAddr::new(host, port);
    let socket = if host.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    let bound = socket.and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(1024)
    });
    bound.map_err(|e| {
        tracing::error!("cannot listen on {var}={port} (MODELMUX_HOST={host}): {e}");
        ExitCode::FAILURE
    })
}

/// The plan fixed the engine ports, the extra ones some profiles need included (TGI's
/// Prometheus and torch master ports); one that another process holds would make its engine
/// crash-loop on "address in use", so it is an error before anything starts.
fn check_engine_ports(plan: &LaunchPlan) -> Result<(), String> {
    for m in &plan.models {
        let ports = std::iter::once((m.port, "engine port"))
            .chain(m.extra_ports.iter().map(|&p| (p, "extra engine port")));
        for (port, what) in ports {
            if let Err(e) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                return Err(format!(
                    "{what} 127.0.0.1:{port} of model {} is in use ({e}); engines get PORT+1, \
                     PORT+2, ... (skipping HEALTH_CHECK_PORT), then the extra ports some engines \
                     need: free that port, or move them with MODELMUX_ENGINE_BASE_PORT",
                    m.name
                ));
            }
        }
    }
    Ok(())
}

/// Kills every engine group at once (the second signal).
fn kill_all_now(state: &StateRx) {
    for pid in state.borrow().models.iter().filter_map(|m| m.pid) {
        group::signal_group(pid, Signal::SIGKILL);
    }
}

/// Serves until a signal or a fatal failure; returns the exit code.
pub async fn run(settings: Settings, plan: LaunchPlan, reload: Loader) -> ExitCode {
    let started = tokio::time::Instant::now();
    let settings = Arc::new(settings);
    let reaper = match Reaper::start() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot set up child reaping: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (Ok(mut sigterm), Ok(mut sigint)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    // Bind before starting engines: a port in use fails fast, before any GPU is touched.
    let front_listener = match bind("PORT", settings.host, settings.port).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let health_listener = if settings.health_port != settings.port {
        match bind("HEALTH_CHECK_PORT", settings.host, settings.health_port).await {
            Ok(l) => Some(l),
            Err(code) => return code,
        }
    } else {
        None
    };

    if let Err(e) = check_engine_ports(&plan) {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }

    let (state_tx, state_rx) = watch::channel(Snapshot::initial(&plan));
    // Engines start now; the front is bound already and answers 503 until they are ready.
    let mut supervisor = Supervisor::start(&plan, settings.clone(), reaper, state_tx.clone());
    let live = Arc::new(Live::new(supervisor.control(), reload));
    reload_on_sighup(live.clone());
    let admin = Arc::new(Admin::new(settings.admin_key.clone(), live));
    let app = Arc::new(App::new(&plan, &settings, state_rx.clone(), admin));
    let (stop_front, stop_rx) = watch::channel(false);
    // The front runs on threads of its own, one per core (see front::workers).
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut front = match front_listener
        .into_std()
        .and_then(|l| front::workers::spawn(l, threads, app.clone(), stop_rx.clone()))
    {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("cannot start the front: {e}");
            return ExitCode::FAILURE;
        }
    };
    let health_task =
        health_listener.map(|l| tokio::spawn(front::serve_health(l, app.clone(), stop_rx)));
    tracing::info!(
        port = settings.port,
        health_port = settings.health_port,
        models = plan.models.len(),
        "modelmux is up; starting engines"
    );
    let serving_on = format!("http://{}", SocketAddr::new(settings.host, settings.port));
    tokio::spawn(progress::report(
        state_rx.clone(),
        settings.progress_interval,
        started,
        serving_on,
    ));

    let exit_on_failure = settings.on_failure == OnFailure::Exit;
    let outcome = tokio::select! {
        _ = sigterm.recv() => Outcome::Signal("SIGTERM"),
        _ = sigint.recv() => Outcome::Signal("SIGINT"),
        f = supervisor.next_failure(), if exit_on_failure => Outcome::Failed(f),
        r = front.next_exit() => Outcome::FrontDied(match r {
            Ok(()) => "the front stopped".into(),
            Err(e) => format!("the front failed: {e}"),
        }),
    };
    match &outcome {
        Outcome::Signal(name) => {
            tracing::info!("{name} received; shutting down (send it again to kill at once)")
        }
        Outcome::Failed(f) => tracing::error!(
            "model {} failed; shutting down (MODELMUX_ON_FAILURE=exit)",
            f.model
        ),
        Outcome::FrontDied(why) => tracing::error!("{why}; shutting down"),
    }

    // Health turns 503 and new requests are refused from here on.
    state_tx.send_modify(|s| s.stopping = true);
    let kill_state = state_rx.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        tracing::warn!("second signal: killing every engine now");
        kill_all_now(&kill_state);
        crate::observability::sink::flush();
        std::process::exit(1);
    });

    // The front keeps listening while the requests in flight finish: a new connection gets
    // its 503 (and /health its "stopping"), not a refused connection. Then it stops, and
    // waits for what is still under way, all within the grace.
    let grace = settings.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    let usages: Vec<_> = state_rx
        .borrow()
        .models
        .iter()
        .map(|m| m.usage.clone())
        .collect();
    let in_flight_done = async {
        for usage in &usages {
            usage.drained().await;
        }
    };
    let _ = tokio::time::timeout_at(deadline, in_flight_done).await;
    let _ = stop_front.send(true);
    if tokio::time::timeout_at(deadline, front.join())
        .await
        .is_err()
    {
        tracing::warn!(
            "in-flight requests did not finish within MODELMUX_SHUTDOWN_GRACE ({:.0} s); closing them",
            grace.as_secs_f64()
        );
    }
    if let Some(t) = health_task {
        t.abort();
    }
    supervisor.shutdown().await;
    match outcome {
        Outcome::Signal(_) => {
            tracing::info!("clean shutdown");
            ExitCode::SUCCESS
        }
        Outcome::Failed(f) => {
            tracing::error!("exiting with status 1: {f}");
            ExitCode::FAILURE
        }
        Outcome::FrontDied(_) => ExitCode::FAILURE,
    }
}
