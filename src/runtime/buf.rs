//! Relay buffers and the reads and writes that fill and drain them: [`Buf`] (bytes with a
//! fill mark), the shard's [`BufPool`] (an idle client holds no buffer), and the helpers the
//! login and the relay read and write [`Stream`]s with.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use futures_lite::AsyncRead;

use super::io::Stream;

/// Relay buffer size: large enough to move a whole pgbench transaction
/// (and most result sets) in one read and one write.
pub const BUF_SIZE: usize = 32 * 1024;

/// A byte buffer with a fill mark; `bytes.len()` is its capacity.
#[derive(Debug)]
pub struct Buf {
    /// Storage (zero-initialised once, reused).
    pub bytes: Vec<u8>,
    /// Bytes of valid data at the front.
    pub filled: usize,
}

impl Buf {
    /// The valid data.
    pub fn data(&self) -> &[u8] {
        &self.bytes[..self.filled]
    }

    /// Drops the first `n` bytes, moving the rest to the front.
    pub fn consume(&mut self, n: usize) {
        self.bytes.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Makes room for at least `n` bytes of data in total.
    pub fn reserve_total(&mut self, n: usize) {
        if self.bytes.len() < n {
            self.bytes.resize(n, 0);
        }
    }
}

/// The shard's free list of relay buffers, so a connection holds a buffer
/// only while it has data in flight.
///
/// A burst (1000 clients waiting, each holding its request) can leave thousands of buffers
/// on the list, each with touched pages: up to `MAX_FREE` x 32 KiB per shard. [`BufPool::trim`]
/// (the janitor, every second) gives back half of those that stayed unused since its last
/// call, so a shard's memory follows its load down within seconds, while a steady load,
/// which keeps cycling the same buffers, allocates nothing.
#[derive(Debug, Default)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    /// The shortest the free list has been since the last trim: that many buffers were
    /// not needed meanwhile.
    low: Cell<usize>,
}

/// Free buffers kept per shard at most; the rest are returned to the allocator.
const MAX_FREE: usize = 4096;

impl BufPool {
    /// Takes a buffer (empty of data).
    pub fn take(&self) -> Buf {
        let mut free = self.free.borrow_mut();
        let bytes = free.pop().unwrap_or_else(|| vec![0; BUF_SIZE]);
        if free.len() < self.low.get() {
            self.low.set(free.len());
        }
        Buf { bytes, filled: 0 }
    }

    /// Frees half of the buffers that stayed on the list since the last call (see the type).
    /// Returns how many were freed.
    pub fn trim(&self) -> usize {
        let mut free = self.free.borrow_mut();
        let len = free.len();
        let spare = self.low.get().min(len).div_ceil(2);
        let keep = len - spare;
        free.truncate(keep);
        if free.capacity() > 2 * keep + 64 {
            free.shrink_to(keep + 32);
        }
        self.low.set(free.len());
        spare
    }

    /// Buffers on the free list.
    #[cfg(test)]
    pub fn free_count(&self) -> usize {
        self.free.borrow().len()
    }

    /// Returns a buffer. Oversized ones (grown for a large message) are
    /// dropped so the pool stays at `BUF_SIZE` buffers.
    pub fn give(&self, buf: Buf) {
        let mut free = self.free.borrow_mut();
        if buf.bytes.len() == BUF_SIZE && free.len() < MAX_FREE {
            free.push(buf.bytes);
        }
    }

    /// Waits for data on `stream` holding no buffer, then returns a buffer
    /// with what was read (`filled == 0` means end of stream).
    ///
    /// A plain function returning the `poll_fn`, not an `async fn`: every idle client waits in
    /// this future, and an `async fn` would keep its two references twice (the arguments and
    /// the closure's captures), 16 bytes per idle client for nothing.
    pub fn read<'a>(
        &'a self,
        stream: &'a mut Stream,
    ) -> impl Future<Output = io::Result<Buf>> + 'a {
        std::future::poll_fn(move |cx| {
            let mut buf = self.take();
            match Pin::new(&mut *stream).poll_read(cx, &mut buf.bytes) {
                Poll::Ready(Ok(n)) => {
                    buf.filled = n;
                    Poll::Ready(Ok(buf))
                }
                Poll::Ready(Err(e)) => {
                    self.give(buf);
                    Poll::Ready(Err(e))
                }
                Poll::Pending => {
                    self.give(buf);
                    Poll::Pending
                }
            }
        })
    }
}

/// Reads into the unfilled tail of `buf`; returns the byte count (0 = EOF).
pub async fn read_into(stream: &mut Stream, buf: &mut Buf) -> io::Result<usize> {
    if buf.filled == buf.bytes.len() {
        let n = buf.bytes.len() * 2;
        buf.reserve_total(n);
    }
    let n = futures_lite::AsyncReadExt::read(stream, &mut buf.bytes[buf.filled..]).await?;
    buf.filled += n;
    Ok(n)
}

/// Writes all of `data`.
pub async fn write_all(stream: &mut Stream, data: &[u8]) -> io::Result<()> {
    futures_lite::AsyncWriteExt::write_all(stream, data).await
}

/// Which side had data first in [`read_either`].
#[derive(Debug)]
pub enum Either {
    /// The first stream read this many bytes (0 = EOF).
    First(io::Result<usize>),
    /// The second stream read this many bytes (0 = EOF).
    Second(io::Result<usize>),
}

/// Waits for whichever of two streams has data first and reads it into that
/// stream's buffer tail. The second stream is polled first: in the relay it
/// is the server, whose replies should drain before more requests pile up.
pub async fn read_either(a: &mut Stream, abuf: &mut Buf, b: &mut Stream, bbuf: &mut Buf) -> Either {
    for buf in [&mut *abuf, &mut *bbuf] {
        if buf.filled == buf.bytes.len() {
            let n = buf.bytes.len() * 2;
            buf.reserve_total(n);
        }
    }
    std::future::poll_fn(|cx| {
        let (bf, af) = (bbuf.filled, abuf.filled);
        if let Poll::Ready(r) = Pin::new(&mut *b).poll_read(cx, &mut bbuf.bytes[bf..]) {
            if let Ok(n) = r {
                bbuf.filled += n;
            }
            return Poll::Ready(Either::Second(r));
        }
        if let Poll::Ready(r) = Pin::new(&mut *a).poll_read(cx, &mut abuf.bytes[af..]) {
            if let Ok(n) = r {
                abuf.filled += n;
            }
            return Poll::Ready(Either::First(r));
        }
        Poll::Pending
    })
    .await
}
