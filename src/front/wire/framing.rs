//! Where an engine's response body ends, found while its bytes pass through untouched.
//!
//! The pass-through path sends the engine's body to the client byte for byte, chunked
//! encoding included (both sides speak HTTP/1.1), so it never re-encodes; it only has to
//! know when the response is over, so that the engine connection can be reused and the
//! next request on the client connection can start.

/// How the rest of a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// No body (204, 304).
    Empty,
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
    /// Neither: the body ends when the engine closes the connection.
    UntilClose,
}

use crate::front::sse::EventBoundary;

/// A chunked body was malformed.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

impl Framing {
    /// Takes `data` (the next bytes from the engine) and says how many of them belong to
    /// this body and whether the body is now complete.
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), Malformed> {
        match self {
            Framing::Empty => Ok((0, true)),
            Framing::Length(left) => {
                let take = (*left).min(data.len() as u64);
                *left -= take;
                Ok((take as usize, *left == 0))
            }
            Framing::Chunked(c) => c.feed(data),
            Framing::UntilClose => Ok((data.len(), false)),
        }
    }

    /// True when the engine closing the connection ends the body properly.
    pub fn ends_at_close(&self) -> bool {
        matches!(self, Framing::UntilClose)
    }

    /// True when a chunk of our own can be put in here without splitting an engine's
    /// chunk or an event of the stream (SSE keepalive comments).
    pub fn between_events(&self) -> bool {
        matches!(self, Framing::Chunked(c) if c.between_events())
    }
}

/// The state of a chunked-body scanner (RFC 9112 §7.1).
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    events: EventBoundary,
}

impl PartialEq for Chunked {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state
    }
}

impl Eq for Chunked {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the chunk size; `digits` tells whether one was seen.
    Size {
        size: u64,
        digits: bool,
    },
    /// After `;`: a chunk extension, skipped up to CR.
    Extension {
        size: u64,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// Chunk data still to come.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size {
                size: 0,
                digits: false,
            },
            events: EventBoundary::default(),
        }
    }
}

impl Chunked {
    /// Scans `data`; returns the bytes that belong to the body and whether it ended.
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), Malformed> {
        let mut i = 0;
        while i < data.len() {
            if self.state == State::Done {
                break;
            }
            if let State::Data(left) = self.state {
                let take = left.min((data.len() - i) as u64);
                self.events.feed(&data[i..i + take as usize]);
                i += take as usize;
                self.state = if left == take {
                    State::DataCr
                } else {
                    State::Data(left - take)
                };
                continue;
            }
            self.state = step(self.state, data[i])?;
            i += 1;
        }
        Ok((i, self.state == State::Done))
    }

    /// True at the start of a chunk-size line, after a whole event.
    pub fn between_events(&self) -> bool {
        self.state
            == (State::Size {
                size: 0,
                digits: false,
            })
            && self.events.at_boundary()
    }
}

fn step(state: State, b: u8) -> Result<State, Malformed> {
    use State::*;
    Ok(match (state, b) {
        (Size { size, .. }, _) if b.is_ascii_hexdigit() => {
            let digit = (b as char).to_digit(16).expect("hex digit") as u64;
            let size = size
                .checked_mul(16)
                .and_then(|s| s.checked_add(digit))
                .ok_or(Malformed)?;
            Size { size, digits: true }
        }
        (Size { size, digits: true }, b';' | b' ' | b'\t') => Extension { size },
        (Size { size, digits: true }, b'\r') => SizeLf { size },
        (Extension { size }, b'\r') => SizeLf { size },
        (Extension { size }, _) => Extension { size },
        (SizeLf { size: 0 }, b'\n') => TrailerStart,
        (SizeLf { size }, b'\n') => Data(size),
        (DataCr, b'\r') => DataLf,
        (DataLf, b'\n') => Size {
            size: 0,
            digits: false,
        },
        (TrailerStart, b'\r') => EndLf,
        (TrailerLine, b'\r') => TrailerLf,
        (TrailerStart | TrailerLine, _) => TrailerLine,
        (TrailerLf, b'\n') => TrailerStart,
        (EndLf, b'\n') => Done,
        _ => return Err(Malformed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(body: &[u8], piece: usize) -> (usize, bool) {
        let mut c = Chunked::default();
        let mut used = 0;
        for part in body.chunks(piece) {
            let (n, done) = c.feed(part).unwrap();
            used += n;
            if done {
                return (used, true);
            }
        }
        (used, false)
    }

    #[test]
    fn chunked_bodies_end_where_they_end_in_any_split() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nNEXT";
        for piece in 1..body.len() {
            assert_eq!(
                scan_in_pieces(body, piece),
                (body.len() - 4, true),
                "{piece}"
            );
        }
        let trailers = b"3\r\nabc\r\n0\r\nx-checksum: 1\r\n\r\n";
        assert_eq!(scan_in_pieces(trailers, 2), (trailers.len(), true));
        let cut = b"5\r\nhel";
        assert_eq!(scan_in_pieces(cut, 3), (cut.len(), false));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX",
            b"ffffffffffffffffff\r\n",
        ] {
            assert_eq!(Chunked::default().feed(bad), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn keepalives_only_fit_between_chunks_that_end_events() {
        let mut c = Chunked::default();
        assert!(c.between_events(), "before the first chunk");
        c.feed(b"7\r\ndata: a").unwrap();
        assert!(!c.between_events(), "inside a chunk");
        c.feed(b"\r\n").unwrap();
        assert!(!c.between_events(), "the event is not over");
        c.feed(b"2\r\n\n\n\r\n").unwrap();
        assert!(c.between_events());
        c.feed(b"3").unwrap();
        assert!(!c.between_events(), "inside a size line");
    }

    #[test]
    fn lengths_and_empty_bodies() {
        let mut f = Framing::Length(5);
        assert_eq!(f.feed(b"abc").unwrap(), (3, false));
        assert_eq!(f.feed(b"defgh").unwrap(), (2, true));
        assert_eq!(Framing::Empty.feed(b"xyz").unwrap(), (0, true));
        assert_eq!(Framing::UntilClose.feed(b"xyz").unwrap(), (3, false));
    }
}
