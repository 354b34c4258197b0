//! Reads that spare a system call. tokio counts a socket as readable until a read would
//! block, so after a read that took everything, the next wait for data would first make
//! one more `recvfrom` only to learn `EAGAIN` (measured: one in three reads on the proxy
//! path). A read that returns less than the room it was given emptied the socket at that
//! instant, so its readable state can be forgotten at once, without that call.
//!
//! This is sound because a front thread's runtime is single-threaded: readiness only
//! changes when its event loop runs, never between the read and the forgetting (no await
//! in between). Data that arrives after the read raises a new event. A close is never
//! forgotten: tokio keeps "read closed" until it is seen.

use std::io;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// One non-blocking read into `buf`; forgets the socket's readable state when the read
/// emptied the socket.
pub fn try_read(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let n = stream.try_read_buf(buf)?;
    if n > 0 && n < room {
        let _ = stream.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
    Ok(n)
}

/// Waits until the socket has data, then reads it as [`try_read`] does.
pub async fn read(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match try_read(stream, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}
