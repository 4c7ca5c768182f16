//! Heap blocks reused per thread, for what is boxed once per transaction (the lease future,
//! a client's link to its server).
//!
//! A session boxes its lease (wait, parameter sync, relay, release: ~1 KB of state) so
//! that an idle client does not carry it. That is one allocation and one free per
//! transaction, and at that size glibc's per-thread cache (blocks up to 1 KiB) does not
//! help: both calls take the arena's slower path (~3% of the pooler's CPU at 50 clients).
//! [`Recycled`] keeps freed blocks on a per-thread list by layout and takes the next one
//! from it, so in steady state a transaction allocates nothing. The list is capped
//! ([`KEEP`] blocks per layout): after a burst the rest go back to the allocator.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks kept per layout and thread: about as many as transactions a shard runs at
/// once in a busy pool; more are freed.
pub const KEEP: usize = 64;

/// A thread's free blocks, by layout (few layouts: a linear scan).
struct FreeLists(Vec<(Layout, Vec<NonNull<u8>>)>);

impl Drop for FreeLists {
    fn drop(&mut self) {
        for (layout, blocks) in self.0.drain(..) {
            for block in blocks {
                // SAFETY: every block on the list came from `alloc(layout)` and is unused.
                unsafe { dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

thread_local! {
    static FREE: RefCell<FreeLists> = const { RefCell::new(FreeLists(Vec::new())) };
}

fn take(layout: Layout) -> NonNull<u8> {
    let reused = FREE
        .try_with(|free| {
            let mut free = free.borrow_mut();
            free.0
                .iter_mut()
                .find(|(l, _)| *l == layout)
                .and_then(|(_, blocks)| blocks.pop())
        })
        .ok()
        .flatten();
    reused.unwrap_or_else(|| {
        // SAFETY: `layout` has a non-zero size (checked by the caller).
        let block = unsafe { alloc(layout) };
        NonNull::new(block).unwrap_or_else(|| handle_alloc_error(layout))
    })
}

fn give(layout: Layout, block: NonNull<u8>) {
    let kept = FREE
        .try_with(|free| {
            let mut free = free.borrow_mut();
            let lists = &mut free.0;
            let i = match lists.iter().position(|(l, _)| *l == layout) {
                Some(i) => i,
                None => {
                    lists.push((layout, Vec::with_capacity(KEEP)));
                    lists.len() - 1
                }
            };
            let blocks = &mut lists[i].1;
            if blocks.len() < KEEP {
                blocks.push(block);
                true
            } else {
                false
            }
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: `block` came from `take(layout)`, and its value was dropped.
        unsafe { dealloc(block.as_ptr(), layout) };
    }
}

/// A value on the heap in a block taken from this thread's free list (a `Box` that reuses
/// its memory). It never moves once placed, so a future in it can be polled.
pub struct Recycled<T> {
    ptr: NonNull<T>,
    /// Owns a `T`, and is neither `Send` nor `Sync` (the free list is the thread's).
    _owns: PhantomData<T>,
}

impl<T> Recycled<T> {
    /// Places `value` in a recycled block (or a new one).
    pub fn new(value: T) -> Self {
        Self::with(|| value)
    }

    /// Places what `make` returns in a recycled block, built there rather than moved in:
    /// `make` runs once the block is taken, so its result can be written straight into it.
    /// For a future that has not started this matters: `new` copies all of its
    /// `size_of` (the lease's ~1 KB, per transaction) although only its arguments hold
    /// anything yet.
    pub fn with(make: impl FnOnce() -> T) -> Self {
        let layout = Layout::new::<T>();
        let ptr = if layout.size() == 0 {
            NonNull::dangling()
        } else {
            take(layout).cast::<T>()
        };
        // SAFETY: `ptr` is valid for writes of a `T` and properly aligned (a block of `T`'s
        // layout, or dangling for a zero-sized `T`), and holds no value.
        unsafe { ptr.as_ptr().write(make()) };
        Recycled {
            ptr,
            _owns: PhantomData,
        }
    }
}

impl<T> Drop for Recycled<T> {
    fn drop(&mut self) {
        // SAFETY: the value was written in `new` and is dropped only here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        let layout = Layout::new::<T>();
        if layout.size() != 0 {
            give(layout, self.ptr.cast());
        }
    }
}

/// Shared access only: a `DerefMut` would let a pinned future be swapped out of its block.
impl<T> std::ops::Deref for Recycled<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the value lives at `ptr` from `new` until `drop`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Recycled<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives at `ptr` from `new` until `drop` and is never moved out,
        // so pinning it is sound whether or not `Recycled` itself moves.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_freed_block_is_taken_again() {
        let first = Recycled::new([7u64; 64]);
        let at = first.ptr.as_ptr() as usize;
        drop(first);
        let second = Recycled::new([9u64; 64]);
        assert_eq!(second.ptr.as_ptr() as usize, at);
        // SAFETY: test: the value was written by `new`.
        assert_eq!(unsafe { (*second.ptr.as_ptr())[63] }, 9);
    }

    #[test]
    fn values_are_dropped_once_and_the_list_is_capped() {
        let counter = Rc::new(());
        let many: Vec<_> = (0..KEEP + 10)
            .map(|_| Recycled::new(counter.clone()))
            .collect();
        assert_eq!(Rc::strong_count(&counter), KEEP + 11);
        drop(many);
        assert_eq!(Rc::strong_count(&counter), 1);
        let kept = FREE.with(|f| {
            let f = f.borrow();
            f.0.iter()
                .find(|(l, _)| *l == Layout::new::<Rc<()>>())
                .map_or(0, |(_, b)| b.len())
        });
        assert_eq!(kept, KEEP);
    }

    #[test]
    fn a_future_in_a_recycled_block_runs() {
        let fut = Recycled::new(async { 40 + 2 });
        assert_eq!(futures_lite::future::block_on(fut), 42);
        let zst = Recycled::new(std::future::ready(()));
        futures_lite::future::block_on(zst);
    }
}
