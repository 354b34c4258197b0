//! Buffers lent to a connection while it works on a request, and given back when it goes
//! idle: an idle keep-alive connection holds no buffer at all, so 10,000 of them cost
//! little, while busy ones reuse buffers instead of allocating per request. Each front
//! thread keeps its own pool (a connection lives on one thread).

use std::cell::RefCell;

use bytes::BytesMut;

/// Room made in a buffer before each read (nginx's default buffer is 4 or 8 KiB; a
/// larger body takes more reads). With 1,000 open streams, each such buffer costs 8 MiB.
pub const READ_SIZE: usize = 8 * 1024;
/// Room for a request's first read: most requests are a few hundred bytes.
const FIRST_READ: usize = 4 * 1024;
/// A buffer that grew past this for one large request or response is let go afterwards.
pub const KEEP_CAPACITY: usize = 64 * 1024;
/// Buffers kept per thread for the next busy connection.
const POOL: usize = 64;

/// One connection's working buffers.
#[derive(Default)]
pub struct Buffers {
    /// Bytes read from the client and not yet consumed.
    pub read: BytesMut,
    /// The rest.
    pub scratch: Scratch,
}

/// Buffers of one exchange with an engine.
#[derive(Default)]
pub struct Scratch {
    /// The engine's request, as built by [`super::request::step`].
    pub out: Vec<u8>,
    /// Bytes read from the engine.
    pub engine: BytesMut,
    /// The client's response head (and the first body bytes).
    pub head: Vec<u8>,
    /// Bytes the client sent while its response was under way (a pipelined request).
    pub early: BytesMut,
}

impl Buffers {
    /// Moves bytes that arrived early behind the unread ones.
    pub fn take_early(&mut self) {
        let early = &mut self.scratch.early;
        if !early.is_empty() {
            self.read.extend_from_slice(early);
            early.clear();
        }
    }

    /// The client bytes, for a hand-over.
    pub fn into_read(self) -> BytesMut {
        self.read
    }

    fn clear_and_shrink(&mut self) {
        let s = &mut self.scratch;
        s.out.clear();
        s.head.clear();
        if s.out.capacity() > KEEP_CAPACITY {
            s.out = Vec::new();
        }
        if s.head.capacity() > KEEP_CAPACITY {
            s.head = Vec::new();
        }
        for b in [&mut self.read, &mut s.engine, &mut s.early] {
            b.clear();
            if b.capacity() > KEEP_CAPACITY {
                *b = BytesMut::new();
            }
        }
    }
}

thread_local! {
    static SPARE: RefCell<Vec<Buffers>> = const { RefCell::new(Vec::new()) };
}

/// Buffers for a connection that has bytes to read, with room for a read.
pub fn lend() -> Buffers {
    let mut b = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    b.read.reserve(FIRST_READ);
    b
}

/// Takes back the buffers of a connection that went idle (all of them empty).
pub fn give_back(mut b: Buffers) {
    b.clear_and_shrink();
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < POOL {
            spare.push(b);
        }
    });
}
