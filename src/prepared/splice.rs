//! Building one output from a buffer of messages with a few of them
//! replaced, dropped or added, copying nothing while nothing changed.
//!
//! The relay forwards what it read with one write, straight from its read
//! buffer. When the rewriter changes a message, the bytes kept so far are
//! copied into a scratch buffer, the change is appended, and the rest of
//! the batch follows, so a whole pipeline still goes out in one write.

/// A lazily-built copy of `src` with changes.
#[derive(Debug)]
pub struct Splice<'a> {
    src: &'a [u8],
    out: &'a mut Vec<u8>,
    /// Start of the source bytes kept but not yet copied.
    run: usize,
    built: bool,
}

impl<'a> Splice<'a> {
    /// Starts over `src`, building into `out` (which must be empty) only if
    /// something changes.
    pub fn new(src: &'a [u8], out: &'a mut Vec<u8>) -> Self {
        Splice {
            src,
            out,
            run: 0,
            built: false,
        }
    }

    /// The source bytes.
    pub fn src(&self) -> &'a [u8] {
        self.src
    }

    /// Replaces `src[from..to]` (empty for an insertion) with what the
    /// caller appends to the returned buffer.
    pub fn replace(&mut self, from: usize, to: usize) -> &mut Vec<u8> {
        self.built = true;
        self.out.extend_from_slice(&self.src[self.run..from]);
        self.run = to;
        self.out
    }

    /// Ends at `end`: `Some(end)` when the source can be written as is,
    /// `None` when the output was built (and now holds everything).
    pub fn finish(self, end: usize) -> Option<usize> {
        if !self.built {
            return Some(end);
        }
        self.out.extend_from_slice(&self.src[self.run..end]);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_source_is_not_copied() {
        let mut out = Vec::new();
        let s = Splice::new(b"abcdef", &mut out);
        assert_eq!(s.finish(4), Some(4));
        assert!(out.is_empty());
    }

    #[test]
    fn replace_drop_and_insert() {
        let mut out = Vec::new();
        let mut s = Splice::new(b"abcdefgh", &mut out);
        s.replace(1, 3).extend_from_slice(b"XY"); // bc -> XY
        s.replace(4, 5); // drop e
        s.replace(6, 6).push(b'!'); // insert before g
        assert_eq!(s.finish(7), None);
        assert_eq!(out, b"aXYdf!g");
    }
}
