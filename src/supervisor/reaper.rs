//! The one owner of reaping, and the one thread that forks guardians.
//!
//! Each engine runs under its own guardian ([`super::guardian`]), modelmux's only children.
//! modelmux is also a child subreaper (or PID 1), so orphans come back to it and must be
//! reaped. A `waitpid(-1)` loop would steal the exit statuses that `tokio::process` waits
//! for, so modelmux does not use `tokio::process` at all: [`Reaper`] reaps every child on
//! SIGCHLD and hands each guardian's status to whoever registered its pid.
//!
//! Guardians are forked from one dedicated thread that lives as long as modelmux. Forking
//! and registering the pid happen under the same lock the reaper takes, so the reaper never
//! reaps a child before it is registered, nor the child std's `spawn` waits for when `exec`
//! fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// A started guardian: its pid, the engine's output pipes, the socket to the guardian and
/// the promise of the guardian's exit status.
pub struct Spawned {
    /// The guardian's pid (the engine's pid comes over `control`).
    pub guardian: u32,
    /// The engine's stdout pipe.
    pub stdout: ChildStdout,
    /// The engine's stderr pipe.
    pub stderr: ChildStderr,
    /// modelmux's end of the guardian's socket (see [`super::guardian`]).
    pub control: UnixStream,
    /// Resolves when the reaper collects the guardian.
    pub exit: oneshot::Receiver<Exit>,
}

/// What to start.
pub struct SpawnRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Variables added to (or replacing) modelmux's environment.
    pub env: BTreeMap<String, String>,
    /// How long the guardian waits after SIGTERM before SIGKILL when the engine ends on its
    /// own (its leftovers) or when it is signalled directly.
    pub grace: Duration,
}

/// The variable every engine (and so every process it starts) gets: this run's id, so that
/// strays of a guardian that was killed can be told from unrelated processes.
pub const RUN_VAR: &str = "MODELMUX_RUN";

/// This run's id: modelmux's pid and start time.
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
    })
}

type Waiters = Arc<Mutex<HashMap<i32, oneshot::Sender<Exit>>>>;
type Job = (SpawnRequest, oneshot::Sender<io::Result<Spawned>>);

/// The reaper and the spawner thread. Clone it freely.
#[derive(Clone)]
pub struct Reaper {
    jobs: mpsc::Sender<Job>,
    waiters: Waiters,
}

/// Environment variables engines must not inherit: the keys that guard modelmux's own API
/// (an engine runs model code, `trust_remote_code` included, that could read them).
const PRIVATE_ENV: &[&str] = &["MODELMUX_API_KEY", "MODELMUX_ADMIN_KEY"];

impl Reaper {
    /// Installs the SIGCHLD handler and starts the spawner thread. Call it inside the tokio
    /// runtime before anything is spawned.
    pub fn start() -> io::Result<Reaper> {
        let waiters: Waiters = Arc::default();
        let mut sigchld = signal(SignalKind::child())?;
        let reap_waiters = waiters.clone();
        tokio::spawn(async move {
            loop {
                reap_all(&reap_waiters);
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        let (jobs, rx) = mpsc::channel::<Job>();
        let spawn_waiters = waiters.clone();
        std::thread::Builder::new()
            .name("modelmux-spawner".into())
            .spawn(move || {
                // This thread must outlive every engine (PR_SET_PDEATHSIG); it ends only
                // when every sender is gone, i.e. when modelmux exits.
                for (req, reply) in rx {
                    let _ = reply.send(spawn_locked(&spawn_waiters, req));
                }
                loop {
                    std::thread::park();
                }
            })?;
        Ok(Reaper { jobs, waiters })
    }

    /// Pids of the children not yet reaped (the guardians).
    pub fn children(&self) -> HashSet<i32> {
        let map = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().copied().collect()
    }

    /// Starts the engine under a new guardian (its own process group, stdin from /dev/null,
    /// the engine's stdout and stderr piped to us).
    pub async fn spawn(&self, req: SpawnRequest) -> io::Result<Spawned> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((req, tx))
            .map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

fn spawn_locked(waiters: &Waiters, req: SpawnRequest) -> io::Result<Spawned> {
    if req.argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    }
    let (ours, theirs) = UnixStream::pair()?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(super::guardian::NAME)
        .arg(super::guardian::FLAG)
        .arg(req.grace.as_millis().to_string())
        .arg("--")
        .args(&req.argv)
        .envs(&req.env)
        .env(RUN_VAR, run_id())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for var in PRIVATE_ENV {
        cmd.env_remove(var);
    }
    let fd = theirs.as_raw_fd();
    let target = super::guardian::CONTROL_FD;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (dup2, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            // Our socket end becomes fd 3 of the guardian, without close-on-exec.
            if fd == target {
                if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if nix::libc::dup2(fd, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut map = waiters.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = cmd.spawn()?;
    let (tx, rx) = oneshot::channel();
    map.insert(child.id() as i32, tx);
    drop(map);
    drop(theirs);
    Ok(Spawned {
        guardian: child.id(),
        stdout: child.stdout.take().expect("stdout is piped"),
        stderr: child.stderr.take().expect("stderr is piped"),
        control: ours,
        exit: rx,
    })
}

/// Reaps every child that has exited; engines' statuses go to their waiters, orphans are
/// just collected so that no zombie is left.
fn reap_all(waiters: &Waiters) {
    let mut map = waiters.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("waitpid failed: {e}");
                return;
            }
        };
        match map.remove(&pid.as_raw()) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => tracing::debug!(pid = pid.as_raw(), %exit, "reaped an orphaned process"),
        }
    }
}
