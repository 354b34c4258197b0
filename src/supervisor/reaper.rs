//! The one owner of reaping, and the one thread that forks engines.
//!
//! modelmux is a child subreaper (or PID 1), so orphans of its engines come back to it and
//! must be reaped. A `waitpid(-1)` loop would steal the exit statuses that `tokio::process`
//! waits for, so modelmux does not use `tokio::process` at all: [`Reaper`] reaps every child
//! on SIGCHLD and hands each engine's status to whoever registered its pid.
//!
//! Engines are forked from one dedicated thread that lives as long as modelmux, because
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits. Forking and
//! registering the pid happen under the same lock the reaper takes, so the reaper never
//! reaps a child before it is registered, nor the child std's `spawn` waits for when `exec`
//! fails.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};

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

/// A started engine: its pid, its output pipes and the promise of its exit status.
pub struct Spawned {
    /// Its pid, also its process group id.
    pub pid: u32,
    /// Its stdout pipe.
    pub stdout: ChildStdout,
    /// Its stderr pipe.
    pub stderr: ChildStderr,
    /// Resolves when the reaper collects it.
    pub exit: oneshot::Receiver<Exit>,
}

/// What to start.
pub struct SpawnRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Variables added to (or replacing) modelmux's environment.
    pub env: BTreeMap<String, String>,
}

type Waiters = Arc<Mutex<HashMap<i32, oneshot::Sender<Exit>>>>;
type Job = (SpawnRequest, oneshot::Sender<io::Result<Spawned>>);

/// The reaper and the spawner thread. Clone it freely.
#[derive(Clone)]
pub struct Reaper {
    jobs: mpsc::Sender<Job>,
}

/// Environment variables engines must not inherit.
const PRIVATE_ENV: &[&str] = &["MODELMUX_API_KEY"];

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
        Ok(Reaper { jobs })
    }

    /// Starts a process in its own process group, stdin from /dev/null, stdout and stderr
    /// piped, killed by the kernel if modelmux dies.
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
    let Some((program, args)) = req.argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(&req.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for var in PRIVATE_ENV {
        cmd.env_remove(var);
    }
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // modelmux may have died before prctl took effect: then nobody will kill us.
            if nix::unistd::getppid() != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut map = waiters.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = cmd.spawn()?;
    let (tx, rx) = oneshot::channel();
    map.insert(child.id() as i32, tx);
    drop(map);
    Ok(Spawned {
        pid: child.id(),
        stdout: child.stdout.take().expect("stdout is piped"),
        stderr: child.stderr.take().expect("stderr is piped"),
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
