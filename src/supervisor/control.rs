//! modelmux's side of one guardian's socket: what the guardian reports (the engine's pid,
//! its exit the moment it happens, "everything is gone") and the commands it takes (ordered
//! stop, kill).

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

use super::reaper::{Exit, Reaper};
use super::tree;

/// How long to wait for the guardian after asking it to SIGKILL everything.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What a guardian reports after the engine's pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The engine's main process ended.
    Exited(Exit),
    /// No process of the engine is left; the guardian exits.
    Gone,
    /// The guardian went away without saying `gone` (it was killed).
    Lost,
}

/// One engine under its guardian.
pub struct Guarded {
    /// The engine's main process (its process group id too).
    pub pid: u32,
    /// The guardian's pid.
    pub guardian: u32,
    events: mpsc::UnboundedReceiver<Event>,
    writer: OwnedWriteHalf,
    guardian_exit: Option<oneshot::Receiver<Exit>>,
    finished: bool,
}

impl Guarded {
    /// Waits for the guardian to start the engine; the error says why it could not.
    pub async fn attach(
        control: std::os::unix::net::UnixStream,
        guardian: u32,
        exit: oneshot::Receiver<Exit>,
    ) -> Result<Guarded, String> {
        let control = control
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(control))
            .map_err(|e| format!("cannot talk to the guardian: {e}"))?;
        let (read, writer) = control.into_split();
        let mut lines = BufReader::new(read).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let pid = match first {
            Ok(Ok(Some(line))) => match line.strip_prefix("pid ").map(str::parse::<u32>) {
                Some(Ok(pid)) => pid,
                _ => {
                    let why = line.strip_prefix("error ").unwrap_or(&line).to_string();
                    return Err(why);
                }
            },
            Ok(_) => return Err("the guardian ended before starting the engine".into()),
            Err(_) => return Err("the guardian did not start the engine within 30 s".into()),
        };
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let event = match lines.next_line().await {
                    Ok(Some(line)) => match parse(&line) {
                        Some(e) => e,
                        None => continue,
                    },
                    _ => Event::Lost,
                };
                let last = matches!(event, Event::Gone | Event::Lost);
                if tx.send(event).is_err() || last {
                    return;
                }
            }
        });
        Ok(Guarded {
            pid,
            guardian,
            events,
            writer,
            guardian_exit: Some(exit),
            finished: false,
        })
    }

    /// The next report; `Lost` forever after the last one.
    pub async fn next(&mut self) -> Event {
        self.events.recv().await.unwrap_or(Event::Lost)
    }

    /// Asks for the ordered stop: SIGTERM to the main process, SIGKILL to everything left
    /// after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        let line = format!("stop {}\n", grace.as_millis());
        let _ = self.writer.write_all(line.as_bytes()).await;
    }

    /// Asks for SIGKILL of everything now.
    pub async fn kill(&mut self) {
        let _ = self.writer.write_all(b"kill\n").await;
    }

    /// Waits until no process of the engine is left, up to `limit` (then kills everything)
    /// and returns the main process's exit if it came meanwhile. A guardian that was killed
    /// is made up for: the engine's group and every process of this run that was left
    /// under modelmux get SIGKILL.
    pub async fn finish(&mut self, limit: Duration, reaper: &Reaper) -> Option<Exit> {
        let mut exit = None;
        if self.finished {
            return exit;
        }
        let mut deadline = tokio::time::Instant::now() + limit;
        let mut killed = false;
        loop {
            let event = tokio::select! {
                e = self.next() => e,
                _ = tokio::time::sleep_until(deadline) => {
                    if killed {
                        // Something SIGKILL cannot end yet (stuck in the kernel): do not hang
                        // the restart or the shutdown on it; the guardian keeps trying.
                        let left = tree::descendants(self.guardian as i32);
                        tracing::error!(pid = self.pid, "processes of the engine survive SIGKILL: {left:?}");
                        break;
                    }
                    tracing::warn!(pid = self.pid, "the engine's processes are still there after {:.0} s; killing them", limit.as_secs_f64());
                    killed = true;
                    deadline += KILL_WAIT;
                    self.kill().await;
                    continue;
                }
            };
            match event {
                Event::Exited(e) => exit = Some(e),
                Event::Gone => break,
                Event::Lost => {
                    tracing::warn!(
                        pid = self.pid,
                        guardian = self.guardian,
                        "the engine's guardian is gone; killing what is left of the engine"
                    );
                    super::group::signal_group(self.pid, Signal::SIGKILL);
                    // Orphans arrive as their parents die: look a few times.
                    sweep_strays(reaper, 5).await;
                    break;
                }
            }
        }
        self.finished = true;
        if let Some(rx) = self.guardian_exit.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
        exit
    }
}

fn parse(line: &str) -> Option<Event> {
    let mut words = line.split_whitespace();
    match (
        words.next()?,
        words.next(),
        words.next().map(str::parse::<i32>),
    ) {
        ("exit", Some("code"), Some(Ok(c))) => Some(Event::Exited(Exit::Code(c))),
        ("exit", Some("signal"), Some(Ok(s))) => Some(Event::Exited(Exit::Signal(s))),
        ("gone", _, _) => Some(Event::Gone),
        _ => None,
    }
}

/// Kills every process under modelmux that belongs to one of this run's engines but is no
/// longer under a guardian (its guardian was killed): modelmux is a subreaper, so such
/// orphans come to it. Processes without this run's mark (in a container, whatever else
/// PID 1 inherits) are left alone.
pub async fn sweep_strays(reaper: &Reaper, rounds: usize) {
    let me = std::process::id() as i32;
    let mark = format!("{}={}", super::reaper::RUN_VAR, super::reaper::run_id());
    for round in 0..rounds {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let guardians = reaper.children();
        let procs = tree::processes();
        let strays: Vec<i32> = procs
            .iter()
            .filter(|p| p.ppid == me && !p.zombie && !guardians.contains(&p.pid))
            .filter(|p| tree::has_env(p.pid, &mark))
            .flat_map(|p| {
                let below = tree::descendants_in(&procs, p.pid, &Default::default());
                std::iter::once(p.pid).chain(below.into_iter().map(|d| d.pid))
            })
            .collect();
        if !strays.is_empty() {
            tracing::warn!(
                count = strays.len(),
                "killing processes of engines whose guardian is gone"
            );
            tree::signal_all(&strays, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse() {
        assert_eq!(parse("exit code 2"), Some(Event::Exited(Exit::Code(2))));
        assert_eq!(parse("exit signal 9"), Some(Event::Exited(Exit::Signal(9))));
        assert_eq!(parse("gone"), Some(Event::Gone));
        assert_eq!(parse("exit code x"), None);
        assert_eq!(parse("hello"), None);
    }
}
