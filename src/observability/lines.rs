//! Log lines written without tracing's formatter, byte for byte as it would write them.
//!
//! tracing-subscriber's formatter took 41 % of modelmux's user-space instructions per
//! proxied request (callgrind, c=8): the timestamp, a style wrapper around every field name
//! even without colours, a `fmt::Write` call per piece. The access log is one line per
//! request, so it is written here instead, into the same batched sink, after the same
//! `RUST_LOG` filter check. A test keeps both renderings identical.

use std::cell::{Cell, RefCell};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// A field's value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// Written as is (text) or as a JSON string.
    Str(&'a str),
    /// A number.
    Num(u64),
    /// `true` or `false`.
    Bool(bool),
}

/// Appends an INFO line with `fields` in `format`, with the current time, to `out`.
pub fn info_line(format: LogFormat, fields: &[(&str, Value)], target: &str, out: &mut Vec<u8>) {
    match format {
        LogFormat::Text => {
            push_timestamp(out);
            out.extend_from_slice(b"  INFO");
            for (name, value) in fields {
                out.push(b' ');
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
                match value {
                    Value::Str(s) => out.extend_from_slice(s.as_bytes()),
                    Value::Num(n) => push_u64(out, *n),
                    Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                }
            }
        }
        LogFormat::Json => {
            out.extend_from_slice(b"{\"timestamp\":\"");
            push_timestamp(out);
            out.extend_from_slice(b"\",\"level\":\"INFO\"");
            for (name, value) in fields {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                match value {
                    Value::Str(s) => {
                        let _ = serde_json::to_writer(&mut *out, s);
                    }
                    Value::Num(n) => push_u64(out, *n),
                    Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                }
            }
            out.extend_from_slice(b",\"target\":");
            let _ = serde_json::to_writer(&mut *out, target);
            out.push(b'}');
        }
    }
    out.push(b'\n');
}

/// Writes an INFO line to the log (the batched stderr), reusing a per-thread buffer.
pub fn write_info(format: LogFormat, fields: &[(&str, Value)], target: &str) {
    thread_local! {
        static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        info_line(format, fields, target, &mut line);
        super::sink::append(&line);
    });
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    push_decimal(out, n as usize);
}

/// Appends `n` in decimal, without a formatter or an allocation (log lines, and the front's
/// response heads on its hot path).
#[inline]
pub fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds), as tracing-subscriber writes it. The
/// part up to the second is kept per thread and made once a second.
fn push_timestamp(out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let prefix = SECOND.with(|cache| {
        let (cached, text) = cache.get();
        if cached == secs {
            return text;
        }
        let text = second_text(secs);
        cache.set((secs, text));
        text
    });
    out.extend_from_slice(&prefix);
    out.push(b'.');
    let micros = now.subsec_micros();
    for i in (0..6).rev() {
        out.push(b'0' + (micros / 10u32.pow(i) % 10) as u8);
    }
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` for Unix time `secs`.
fn second_text(secs: u64) -> [u8; 19] {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
    let mut t = *b"0000-00-00T00:00:00";
    let two = |t: &mut [u8; 19], at: usize, v: u64| {
        t[at] = b'0' + (v / 10 % 10) as u8;
        t[at + 1] = b'0' + (v % 10) as u8;
    };
    let y = y.clamp(0, 9999) as u64;
    two(&mut t, 0, y / 100);
    two(&mut t, 2, y % 100);
    two(&mut t, 5, m as u64);
    two(&mut t, 8, d as u64);
    two(&mut t, 11, hh);
    two(&mut t, 14, mm);
    two(&mut t, 17, ss);
    t
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::prelude::*;

    #[test]
    fn dates() {
        assert_eq!(&second_text(0), b"1970-01-01T00:00:00");
        assert_eq!(&second_text(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&second_text(1_795_770_158), b"2026-11-27T09:02:38");
        assert_eq!(&second_text(4_102_444_799), b"2099-12-31T23:59:59");
    }

    /// A writer tracing can format into.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    fn without_timestamp(line: &str) -> String {
        let at = line.find("Z").unwrap();
        line[at + 1..].to_string()
    }

    /// The same line as tracing-subscriber writes with modelmux's configuration.
    #[test]
    fn lines_match_tracing_byte_for_byte() {
        let fields = [
            ("method", Value::Str("POST")),
            ("path", Value::Str("/v1/x \"q\"")),
            ("status", Value::Num(200)),
            ("streamed", Value::Bool(false)),
            ("request_id", Value::Str("a\\b")),
        ];
        for format in [LogFormat::Text, LogFormat::Json] {
            let captured = Captured::default();
            let registry = tracing_subscriber::registry();
            let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = match format {
                LogFormat::Text => Box::new(
                    registry.with(crate::observability::text_layer(captured.clone(), false)),
                ),
                LogFormat::Json => {
                    Box::new(registry.with(crate::observability::json_layer(captured.clone())))
                }
            };
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!(
                    target: "access",
                    method = %"POST",
                    path = %"/v1/x \"q\"",
                    status = 200u16,
                    streamed = false,
                    request_id = %"a\\b",
                );
            });
            let theirs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            let mut ours = Vec::new();
            info_line(format, &fields, "access", &mut ours);
            let ours = String::from_utf8(ours).unwrap();
            assert_eq!(
                without_timestamp(&ours),
                without_timestamp(&theirs),
                "{format:?}"
            );
            let stamp = |l: &str| {
                l[..l.find('Z').unwrap() + 1]
                    .trim_start_matches("{\"timestamp\":\"")
                    .len()
            };
            assert_eq!(stamp(&ours), stamp(&theirs), "{format:?}: timestamp shape");
        }
    }
}
