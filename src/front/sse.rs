//! Server-sent events: where an event ends, so that a keepalive comment
//! (`MODELMUX_SSE_KEEPALIVE`) is only ever sent between two events, never inside one.

/// The comment line sent during long silences in a stream; clients ignore comments.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Tracks whether the bytes of a stream sent so far end between two events.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventBoundary {
    tail: [u8; 4],
    len: usize,
}

impl EventBoundary {
    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        let n = data.len();
        if n >= 4 {
            self.tail.copy_from_slice(&data[n - 4..]);
        } else {
            self.tail.copy_within(n.., 0);
            self.tail[4 - n..].copy_from_slice(data);
        }
        self.len = (self.len + n).min(4);
    }

    /// True when the stream is at its start or just after an event's blank line
    /// (`\n\n`, `\r\n\r\n` or `\r\r`).
    pub fn at_boundary(&self) -> bool {
        let t = &self.tail[4 - self.len..];
        self.len == 0 || t.ends_with(b"\n\n") || t.ends_with(b"\r\n\r\n") || t.ends_with(b"\r\r")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_in_any_split() {
        let stream = b"data: {\"a\": 1}\n\ndata: x\r\n\r\ndata: y\n";
        let ends = [16usize, 27];
        for piece in 1..stream.len() {
            let mut b = EventBoundary::default();
            assert!(b.at_boundary());
            let mut at = 0;
            for part in stream.chunks(piece) {
                b.feed(part);
                at += part.len();
                assert_eq!(b.at_boundary(), ends.contains(&at), "piece {piece} at {at}");
            }
        }
    }
}
