//! A raw HTTP/1.1 client for tests that need to see exactly what is on the wire.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One response as read off the wire.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw client connection.
pub struct Wire {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Wire {
    pub fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads more; false at EOF.
    pub fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).expect("read (timed out?)");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// True when the server closes the connection (after what was already read).
    pub fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }

    /// Reads one final response (1xx responses are returned too), decoding a chunked body.
    pub fn answer(&mut self) -> Answer {
        let (status, headers, head_len) = loop {
            let mut h = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut h);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        let v = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_ascii_lowercase(), v)
                    })
                    .collect();
                break (r.code.unwrap(), headers, n);
            }
            assert!(self.fill(), "closed before a response head");
        };
        self.buf.drain(..head_len);
        let mut a = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if status < 200 {
            return a;
        }
        if a.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill(), "closed inside a chunked body");
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill(), "closed inside a chunk");
                }
                a.body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    return a;
                }
            }
        }
        let len: usize = a.header("content-length").map_or(0, |v| v.parse().unwrap());
        while self.buf.len() < len {
            assert!(self.fill(), "closed inside a body");
        }
        a.body = self.buf.drain(..len).collect();
        a
    }
}

/// A POST with a JSON body and `extra_headers` (each ending in `\r\n`).
pub fn post(path: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: front\r\nContent-Type: application/json\r\n{extra_headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Wire {
    /// A connection already moved to the general wire: a liveness check first makes the
    /// pass-through wire hand it to hyper, which serves it from then on.
    pub fn connect_general(port: u16) -> Self {
        let mut w = Wire::connect(port);
        w.send(b"GET /livez HTTP/1.1\r\nHost: front\r\n\r\n");
        assert_eq!(w.answer().status, 200);
        w
    }

    /// True when the server closes the connection (EOF or reset) within `timeout`; what it
    /// sends meanwhile is kept in the buffer.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut chunk = [0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
