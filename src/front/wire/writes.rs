//! Writes to a client, with nginx's `send_timeout`: a client that takes none of the bytes
//! waiting for it for `MODELMUX_SEND_TIMEOUT` is cut off. Its connection closes, and with
//! it the engine connection (vLLM then aborts the generation), so that a client that stops
//! reading cannot hold a connection, a model's concurrency slot and a generation for ever.
//! The time counts only while the socket is full: a slow reader that keeps taking bytes is
//! never cut, however long the response.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

/// Writes all of `bytes` to `client`; false when the client is gone or was cut off for
/// taking nothing for `limit` (logged with the request's id).
pub async fn send(client: &TcpStream, bytes: &[u8], limit: Duration, id: &[u8]) -> bool {
    match write(client, bytes, limit).await {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            let peer = client
                .peer_addr()
                .map_or_else(|_| "-".to_string(), |a| a.to_string());
            tracing::warn!(
                request_id = %String::from_utf8_lossy(id),
                client = %peer,
                wire = "pass",
                "the client took no bytes of its response for {:.1} s: closed its connection \
                 and its request (MODELMUX_SEND_TIMEOUT)",
                limit.as_secs_f64()
            );
            false
        }
        Err(_) => false,
    }
}

/// Writes all of `bytes`; `TimedOut` when the socket stayed full for `limit`.
pub async fn write(client: &TcpStream, mut bytes: &[u8], limit: Duration) -> io::Result<()> {
    while !bytes.is_empty() {
        // The usual case, a socket with room: one `sendto` and no timer.
        match client.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match tokio::time::timeout(limit, client.writable()).await {
            Ok(ready) => ready?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
    }
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
        assert_eq!(cut.kind(), io::ErrorKind::TimedOut);
        // A reader that drains the socket lets the next write through.
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            while reader.read(&mut buf).await.unwrap_or(0) > 0 {}
        });
        write(&writer, &block, Duration::from_secs(30))
            .await
            .expect("a reading client takes the bytes");
        drop(writer);
        drain.await.unwrap();
    }
}
