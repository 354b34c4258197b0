//! Keep-alive connections to the engines, one pool per front thread: a connection is only
//! ever used by the thread (and so the event loop) that opened it, so no wake-up crosses
//! threads on the proxy path.
//!
//! Engines close idle connections (uvicorn after 5 s); a pooled connection the engine has
//! closed is seen as readable-at-EOF and dropped at checkout. One that closes in the
//! instant between checkout and use is retried once by the caller.

use std::io;
use std::sync::Mutex;

use tokio::net::TcpStream;

/// Idle connections kept per engine per thread.
const MAX_IDLE: usize = 1024;

/// Idle engine connections of one front thread, indexed like the routing table's models.
pub struct Engines {
    idle: Vec<Mutex<Vec<TcpStream>>>,
}

impl Engines {
    /// Empty pools for `engines` engines.
    pub fn new(engines: usize) -> Self {
        Engines {
            idle: (0..engines).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// An idle connection to engine `engine` that still looks open.
    pub fn checkout(&self, engine: usize) -> Option<TcpStream> {
        let mut idle = self.idle[engine].lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = idle.pop() {
            // Anything readable on an idle connection is EOF, an error or garbage.
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
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

/// Opens a connection to an engine (`127.0.0.1:PORT`).
pub async fn connect(authority: &str) -> io::Result<TcpStream> {
    let conn = TcpStream::connect(authority).await?;
    conn.set_nodelay(true)?;
    Ok(conn)
}
