//! The per-engine guardian: the modelmux binary re-executed in a hidden mode, one per engine,
//! sitting between modelmux and the engine (modelmux → guardian → engine → its children).
//!
//! Why: vLLM's API server starts EngineCore and workers; when modelmux is SIGKILLed,
//! `PR_SET_PDEATHSIG` takes the API server down but its children are re-parented away and
//! keep the GPU. A child that calls `setsid()` leaves the process group, so a group signal
//! misses it even at a clean shutdown. The guardian closes both holes without privileges:
//!
//! - it is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so every process the engine starts
//!   that is orphaned (a setsid'd daemon included) is re-parented to the guardian, never
//!   past it: the engine's whole tree is always the guardian's descendants, found by walking
//!   `/proc` and signalled one by one;
//! - it watches a socket to modelmux (fd 3). When modelmux dies, however it dies, the socket
//!   reads end-of-file and the guardian SIGKILLs the whole tree, reaps it and exits. The same
//!   socket carries commands (`stop MILLIS`, `kill`) and reports (`pid N`, `exit code N` /
//!   `exit signal N` the moment the engine's main process ends, `gone` when nothing is left);
//! - the engine gets `PR_SET_PDEATHSIG=SIGKILL` from the (single-threaded) guardian, so it
//!   dies if the guardian is killed; its orphans then go to modelmux, a subreaper itself,
//!   which kills the ones marked with its run (see `MODELMUX_RUN` in [`super::reaper`]).
//!
//! A stop is ordered: SIGTERM to the engine's main process only (vLLM stops its own children
//! in order), then SIGTERM to whatever it left behind once it exits, and SIGKILL to every
//! remaining descendant when the grace period ends.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::reaper::Exit;
use super::tree;

/// The hidden first argument that selects guardian mode.
pub const FLAG: &str = "--mmx-guardian";
/// `argv[0]` and process name of guardians (so `pkill modelmux` does not match them).
pub const NAME: &str = "mmx-guardian";
/// The guardian's end of its socket to modelmux.
pub const CONTROL_FD: i32 = 3;
/// How often a guardian that is stopping the tree looks at `/proc`.
const TICK: u16 = 20;

/// Runs the guardian if this process was started as one (`modelmux --mmx-guardian GRACE_MS
/// -- ENGINE ARGS...`); `None` otherwise. Call it first thing in `main`.
pub fn main_if_guardian() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != FLAG {
        return None;
    }
    let rest: Vec<OsString> = args.collect();
    let grace = rest
        .first()
        .and_then(|g| g.to_str()?.parse::<u64>().ok())
        .map(Duration::from_millis);
    let argv = match (grace, rest.get(1).and_then(|s| s.to_str())) {
        (Some(grace), Some("--")) if rest.len() > 2 => (grace, &rest[2..]),
        _ => {
            eprintln!("{NAME}: internal use only: {FLAG} GRACE_MS -- COMMAND...");
            return Some(ExitCode::from(2));
        }
    };
    Some(run(argv.0, argv.1))
}

fn run(grace: Duration, argv: &[OsString]) -> ExitCode {
    // SAFETY: modelmux placed our end of the socket on fd 3 before exec; nothing else in
    // this process owns it.
    let mut control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    // SAFETY: plain fcntl on a descriptor we own; the engine must not inherit it.
    unsafe { nix::libc::fcntl(CONTROL_FD, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC) };
    let _ = nix::sys::prctl::set_name(c"mmx-guardian");
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!(
            "{NAME}: cannot become a child subreaper ({e}); orphans of the engine may escape"
        );
    }
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    let signals = match mask
        .thread_block()
        .and_then(|()| SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC))
    {
        Ok(fd) => fd,
        Err(e) => {
            let _ = writeln!(control, "error cannot watch signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let main = match spawn_engine(argv) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = writeln!(control, "error {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut guard = Guard {
        me: std::process::id() as i32,
        main,
        main_exit: None,
        grace,
        term_sent: false,
        deadline: None,
        killing: false,
        control: Some(control),
        inbox: Vec::new(),
    };
    guard.report(&format!("pid {main}"));
    guard.run(&signals)
}

/// Starts the engine: its own session (and so its own process group), stdin from
/// `/dev/null`, stdout and stderr inherited (modelmux's pipes), killed by the kernel if the
/// guardian dies.
///
/// A session rather than only a process group because Linux's autogroup (on wherever
/// processes sit outside a CPU cgroup: a GPU box run by hand, not a container) shares CPU
/// time between sessions first: in modelmux's session an engine's busy threads (vLLM's
/// EngineCore polls a core) would split one share with the front's threads, and requests
/// would wait on it. Measured with mock engines: the front's latency spread then matched
/// nginx's and HAProxy's, where it was wider with the engines in modelmux's session.
fn spawn_engine(argv: &[OsString]) -> std::io::Result<i32> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null());
    let guardian = nix::unistd::getpid();
    // SAFETY: only async-signal-safe calls (setsid, sigprocmask, prctl, getppid, _exit)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Never fails here: the forked child is not a process group leader yet.
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(std::io::Error::from)?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != guardian {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    // The child is reaped by `Guard::reap` (waitpid(-1)), never through `Child`.
    Ok(cmd.spawn()?.id() as i32)
}

struct Guard {
    me: i32,
    main: i32,
    main_exit: Option<Exit>,
    grace: Duration,
    term_sent: bool,
    /// When every descendant left gets SIGKILL.
    deadline: Option<Instant>,
    /// Everything is being SIGKILLed (modelmux is gone, asked for it, or the grace ended).
    killing: bool,
    /// `None` once modelmux is gone.
    control: Option<UnixStream>,
    inbox: Vec<u8>,
}

impl Guard {
    fn run(&mut self, signals: &SignalFd) -> ExitCode {
        loop {
            let busy = self.main_exit.is_some() || self.deadline.is_some() || self.killing;
            let timeout = if busy {
                PollTimeout::from(TICK)
            } else {
                PollTimeout::NONE
            };
            let (sig_ready, control_ready) = {
                let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
                if let Some(c) = &self.control {
                    fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => std::thread::sleep(Duration::from_millis(u64::from(TICK))),
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), fds.get(1).is_some_and(ready))
            };
            if sig_ready {
                while let Ok(Some(info)) = signals.read_signal() {
                    let signo = info.ssi_signo as i32;
                    if signo != Signal::SIGCHLD as i32 {
                        // Someone signalled the guardian itself (systemd stopping a unit, a
                        // user): stop the engine in order.
                        self.stop(self.grace);
                    }
                }
            }
            if control_ready {
                self.read_control();
            }
            self.reap();
            if self.deadline.is_some_and(|d| Instant::now() >= d) && !self.killing {
                self.kill_everything();
            }
            if self.killing {
                // Again every tick: a process that forked while we scanned is caught next time.
                tree::signal_all(&tree::descendants(self.me), Signal::SIGKILL);
            }
            if self.main_exit.is_some() && tree::descendants(self.me).is_empty() {
                self.reap();
                self.report("gone");
                return ExitCode::SUCCESS;
            }
        }
    }

    fn report(&mut self, line: &str) {
        if let Some(c) = &mut self.control
            && c.write_all(format!("{line}\n").as_bytes()).is_err()
        {
            self.lost_modelmux();
        }
    }

    fn read_control(&mut self) {
        let Some(c) = &mut self.control else { return };
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(0) | Err(_) => self.lost_modelmux(),
            Ok(n) => {
                self.inbox.extend_from_slice(&buf[..n]);
                while let Some(end) = self.inbox.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.inbox.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    let mut words = line.split_whitespace();
                    match (words.next(), words.next()) {
                        (Some("stop"), Some(ms)) => {
                            let grace = ms.parse().map_or(self.grace, Duration::from_millis);
                            self.stop(grace);
                        }
                        (Some("kill"), _) => self.kill_everything(),
                        _ => {}
                    }
                }
            }
        }
    }

    /// modelmux is gone (socket closed): nobody will supervise the engine any more.
    fn lost_modelmux(&mut self) {
        self.control = None;
        self.kill_everything();
    }

    /// The ordered stop: SIGTERM to the engine's main process (only once), SIGKILL to all
    /// that is left when `grace` ends.
    fn stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
        if self.main_exit.is_none() && !self.term_sent {
            self.term_sent = true;
            tree::signal_all(&[self.main], Signal::SIGTERM);
        }
    }

    fn kill_everything(&mut self) {
        self.killing = true;
        if self.main_exit.is_none() {
            let _ = killpg(Pid::from_raw(self.main), Signal::SIGKILL);
        }
        tree::signal_all(&tree::descendants(self.me), Signal::SIGKILL);
    }

    /// Reaps every child that ended (the engine, and orphans re-parented to us).
    fn reap(&mut self) {
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if pid == self.main && self.main_exit.is_none() {
                self.main_exit = Some(exit);
                self.report(&match exit {
                    Exit::Code(c) => format!("exit code {c}"),
                    Exit::Signal(s) => format!("exit signal {s}"),
                });
                self.main_exited();
            }
        }
    }

    /// The main process ended: whatever it left behind gets SIGTERM now and SIGKILL when the
    /// grace period (already running, or starting now) ends.
    fn main_exited(&mut self) {
        if self.killing {
            return;
        }
        let left = tree::descendants(self.me);
        if !left.is_empty() {
            eprintln!(
                "{NAME}: the engine's main process ended; stopping {} process(es) it left",
                left.len()
            );
            tree::signal_all(&left, Signal::SIGTERM);
        }
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.grace);
        }
    }
}
