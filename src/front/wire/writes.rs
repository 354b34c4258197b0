//! Writes to a client, with nginx's `send_timeout`: a client that takes none of the bytes
//! waiting for it for `MODELMUX_SEND_TIMEOUT` is cut off. Its connection closes, and with
//! it the engine connection (vLLM then aborts the generation), so that a client that stops
//! reading cannot hold a connection, a model's concurrency slot and a generation for ever.
//! The time counts while the client's socket stays full: a client is cut when it frees no
//! room in it for that long (the kernel reports room once about a third of the socket's
//! buffer is free), however long the response. The cut connection is reset, so that the
//! kernel does not keep its unsent megabytes for a client that is not reading them.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::front::App;
use crate::front::access::{self, Wire};

/// Why a write to a client did not complete.
#[derive(Debug)]
pub enum Unsent {
    /// The client took nothing for the limit.
    Stalled,
    /// The connection failed (the client went away).
    Failed(io::Error),
}

/// Writes all of `bytes` to `client`; false when the client is gone or was cut off for
/// taking nothing for `MODELMUX_SEND_TIMEOUT` (counted and logged with the request's id;
/// the connection is then reset when it is dropped).
pub async fn send(client: &TcpStream, bytes: &[u8], app: &App, id: &[u8]) -> bool {
    let limit = app.limits.send_timeout;
    match write(client, bytes, limit).await {
        Ok(()) => true,
        Err(Unsent::Stalled) => {
            let _ = client.set_zero_linger();
            let peer = client
                .peer_addr()
                .map_or_else(|_| "-".to_string(), |a| a.to_string());
            let id = String::from_utf8_lossy(id);
            access::send_timed_out(app, Wire::Pass, &peer, &id);
            false
        }
        Err(Unsent::Failed(_)) => false,
    }
}

/// Writes all of `bytes`; [`Unsent::Stalled`] when the socket stayed full for `limit`.
pub async fn write(client: &TcpStream, mut bytes: &[u8], limit: Duration) -> Result<(), Unsent> {
    while !bytes.is_empty() {
        // The usual case, a socket with room: one `sendto` and no timer.
        match client.try_write(bytes) {
            Ok(0) => return Err(Unsent::Failed(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                bytes = &bytes[n..];
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Unsent::Failed(e)),
        }
        match tokio::time::timeout(limit, client.writable()).await {
            Ok(ready) => ready.map_err(Unsent::Failed)?,
            Err(_) => return Err(Unsent::Stalled),
        }
    }
    // `try_write` spends none of the task's scheduling budget, as `write_all` did: a long
    // response relayed without a pause must still let the thread's other connections run.
    tokio::task::coop::consume_budget().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A reader that stops reading is cut after the limit; one that reads in time is not.
    #[tokio::test]
    async fn only_a_client_that_takes_nothing_for_the_limit_is_cut() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut reader = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (writer, _) = l.accept().await.unwrap();
        let block = vec![b'x'; 1 << 20];
        let limit = Duration::from_millis(200);
        // Fills the buffers between the two sockets, then waits in vain.
        let mut sent = 0usize;
        let cut = loop {
            match write(&writer, &block, limit).await {
                Ok(()) => sent += block.len(),
                Err(e) => break e,
            }
            assert!(sent < 1 << 30, "a gigabyte went into a socket nobody reads");
        };
        assert!(matches!(cut, Unsent::Stalled), "{cut:?}");
        // A reader that drains the socket lets the next write through.
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            while reader.read(&mut buf).await.unwrap_or(0) > 0 {}
        });
        let drained = write(&writer, &block, Duration::from_secs(30)).await;
        assert!(
            drained.is_ok(),
            "a reading client takes the bytes: {drained:?}"
        );
        drop(writer);
        drain.await.unwrap();
    }
}
