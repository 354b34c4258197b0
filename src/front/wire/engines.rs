//! Keep-alive connections to the engines, one pool per front thread: a connection is only
//! ever used by the thread (and so the event loop) that opened it, so no wake-up crosses
//! threads on the proxy path.
//!
//! Engines close idle connections (uvicorn after 5 s). A pooled connection is used only
//! while it has been idle for less than [`crate::front::general::ENGINE_IDLE`], and one the
//! engine has closed is seen as readable-at-EOF and dropped at checkout, so the front
//! rarely writes to a connection the engine is closing; when it does, the request is not
//! retried unless it provably never reached the engine (at most once).

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;

use tokio::net::TcpStream;
use tokio::time::Instant;

#[cfg(test)]
use std::time::Duration;

use crate::front::general::ENGINE_IDLE;

/// Idle connections kept per engine per thread.
const MAX_IDLE: usize = 1024;

struct Idle {
    conn: TcpStream,
    since: Instant,
}

/// Idle engine connections of one front thread, indexed like the routing table's models.
pub struct Engines {
    idle: Vec<Mutex<VecDeque<Idle>>>,
}

impl Engines {
    /// Empty pools for `engines` engines.
    pub fn new(engines: usize) -> Self {
        Engines {
            idle: (0..engines).map(|_| Mutex::new(VecDeque::new())).collect(),
        }
    }

    /// The most recently used idle connection to engine `engine` that is young enough and
    /// still looks open.
    pub fn checkout(&self, engine: usize) -> Option<TcpStream> {
        let mut idle = self.idle[engine].lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Some(Idle { conn, since }) = idle.pop_back() {
            if now.duration_since(since) >= ENGINE_IDLE {
                // The rest are older still.
                idle.clear();
                return None;
            }
            // Anything readable on an idle connection is EOF, an error or garbage. (The
            // response's last read forgot the readable state when it emptied the socket, see
            // `super::reads`, so this costs a system call only when something arrived.)
            if matches!(conn.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn checkin(&self, engine: usize, conn: TcpStream) {
        let mut idle = self.idle[engine].lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while idle
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= ENGINE_IDLE)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle { conn, since: now });
        }
    }
}

/// Opens a connection to an engine (`127.0.0.1:PORT`).
pub async fn connect(authority: &str) -> io::Result<TcpStream> {
    let conn = TcpStream::connect(authority).await?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_dropped_before_uvicorn_would_close_them() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let pool = Engines::new(1);
        let (conn, _server) = tokio::join!(connect(&addr), listener.accept());
        pool.checkin(0, conn.unwrap());
        let conn = pool.checkout(0).expect("a fresh idle connection is reused");
        pool.checkin(0, conn);
        tokio::time::advance(ENGINE_IDLE).await;
        assert!(
            pool.checkout(0).is_none(),
            "idle for {ENGINE_IDLE:?}: dropped"
        );
        assert!(ENGINE_IDLE < Duration::from_secs(5), "uvicorn keeps 5 s");
    }

    #[tokio::test]
    async fn a_connection_the_engine_closed_while_pooled_is_not_handed_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let pool = Engines::new(1);
        let (conn, server) = tokio::join!(connect(&addr), listener.accept());
        pool.checkin(0, conn.unwrap());
        drop(server);
        // The close reaches this event loop soon; until then the connection looks idle.
        for _ in 0..2000 {
            match pool.checkout(0) {
                None => return,
                Some(conn) => pool.checkin(0, conn),
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("a closed connection is still handed out");
    }
}
