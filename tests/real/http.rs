//! A small blocking HTTP/1.1 client for the real-engine tier: every call has a timeout, a
//! stream can be read event by event and dropped half way (a client that goes away).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Longest a plain call may take (a real engine on a busy 2-core machine is slow).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A response read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, or an error that quotes it.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.body)
            .map_err(|e| format!("not JSON ({e}), status {}: {}", self.status, self.body))
    }
}

/// A response's status and headers, and the connection with the body still to read.
type Head = (u16, Vec<(String, String)>, BufReader<TcpStream>);

/// Sends one request (`Connection: close`) and reads the response head.
fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> io::Result<Head> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut writer = stream.try_clone()?;
    writer.write_all(head.as_bytes())?;
    writer.write_all(body.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok((status, headers, reader))
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    })
}

/// One request, the whole response.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<Response> {
    let (status, headers, reader) = send(port, method, path, headers, body, CALL_TIMEOUT)?;
    let mut bytes = Vec::new();
    if is_chunked(&headers) {
        Chunked::new(reader).read_to_end(&mut bytes)?;
    } else {
        let mut reader = reader;
        reader.read_to_end(&mut bytes)?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

pub fn get(port: u16, path: &str) -> io::Result<Response> {
    request(port, "GET", path, &[], "")
}

pub fn post_json(port: u16, path: &str, body: &serde_json::Value) -> io::Result<Response> {
    request(
        port,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        &body.to_string(),
    )
}

/// A server-sent-event stream being read; dropping it closes the connection.
pub struct EventStream {
    pub status: u16,
    lines: BufReader<Chunked>,
}

/// Opens a streaming POST; the events are read with [`EventStream::next_data`].
pub fn open_stream(port: u16, path: &str, body: &serde_json::Value) -> io::Result<EventStream> {
    let (status, headers, reader) = send(
        port,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        &body.to_string(),
        CALL_TIMEOUT,
    )?;
    if !is_chunked(&headers) {
        return Err(io::Error::other(format!(
            "status {status}, not a chunked stream: {headers:?}"
        )));
    }
    Ok(EventStream {
        status,
        lines: BufReader::new(Chunked::new(reader)),
    })
}

impl EventStream {
    /// The payload of the next `data:` line, or None at the end of the stream.
    pub fn next_data(&mut self) -> io::Result<Option<String>> {
        loop {
            let mut line = String::new();
            if self.lines.read_line(&mut line)? == 0 {
                return Ok(None);
            }
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                return Ok(Some(data.trim_start().to_string()));
            }
        }
    }
}

/// Decodes `Transfer-Encoding: chunked`.
struct Chunked {
    inner: BufReader<TcpStream>,
    left: usize,
    done: bool,
}

impl Chunked {
    fn new(inner: BufReader<TcpStream>) -> Self {
        Chunked {
            inner,
            left: 0,
            done: false,
        }
    }
}

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            if self.inner.read_line(&mut size)? == 0 {
                self.done = true;
                return Ok(0);
            }
            let hex = size.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(hex, 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {size:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = String::new();
            self.inner.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}
