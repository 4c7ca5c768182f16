//! Where a linked client/server pair stands in the protocol: ReadyForQuery messages owed, the
//! last transaction status, partial messages in each direction, and COPY FROM STDIN (whose
//! Syncs the server ignores). The relay books every message header here; whether a server may
//! be released, or must be closed, is decided from it.

use crate::prepared::queue::CopyIn as QueuedCopy;
use crate::protocol::{tag, ProtocolError};

/// Where a linked pair stands in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// ReadyForQuery messages still owed to the client.
    pub pending: u32,
    /// The client's extended-protocol exchange is open: it sent extended messages since its
    /// last Sync or Query, whether they reached the server or pgring answered them.
    pub unsynced: bool,
    /// Status byte of the last ReadyForQuery.
    pub status: u8,
    /// Bytes of the current client message not yet seen.
    pub(super) cskip: usize,
    /// Bytes of the current server message not yet seen.
    pub(super) sskip: usize,
    /// Buffered server bytes not yet forwarded.
    pub(super) sheld: usize,
    /// What the client sent since its last Execute or Query, in case that starts a COPY FROM
    /// STDIN.
    after_exec: AfterExec,
    /// The server is in a COPY FROM STDIN (its CopyInResponse passed, its result not yet).
    copy_in: Option<CopyIn>,
}

/// The client's messages since its last Execute or Query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct AfterExec {
    /// It was an Execute (extended protocol), not a Query.
    extended: bool,
    /// Syncs sent after it and before any COPY message: a server in copy-in ignores them.
    syncs: u32,
    /// A COPY message was sent since (before the server asked for data): `syncs` is closed.
    copy_sent: bool,
    /// A CopyDone or CopyFail was sent since.
    copy_ended: bool,
    /// Syncs sent between COPY messages, before the CopyDone or CopyFail: a server in copy-in
    /// ignores them too (they join [`CopyIn::mid_syncs`]).
    mid_syncs: u32,
    /// A Sync was sent after the CopyDone or CopyFail: it reaches the server after copy-in, and
    /// is the one an extended-protocol COPY waits for.
    synced: bool,
    /// Another request (not Sync, Flush or COPY data) was sent since, before any CopyDone or
    /// CopyFail, this one first: if the server then asks for COPY data, it takes that request
    /// for a broken COPY and drops it.
    other: Option<u8>,
}

/// A COPY FROM STDIN in progress on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CopyIn {
    /// Syncs sent during the data (counted as owed until the COPY's result says otherwise).
    mid_syncs: u32,
    /// The client sent CopyDone or CopyFail: the server leaves copy-in when it reads it.
    ended: bool,
}

impl Default for LinkState {
    fn default() -> Self {
        LinkState {
            pending: 0,
            unsynced: false,
            status: b'I',
            cskip: 0,
            sskip: 0,
            sheld: 0,
            after_exec: AfterExec::default(),
            copy_in: None,
        }
    }
}

/// What can be done with a server whose client went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// Idle, clean: reusable.
    Idle,
    /// Between statements inside a transaction: ROLLBACK makes it clean.
    InTransaction,
    /// Mid-message or mid-request: only closing is safe.
    Busy,
}

impl LinkState {
    /// A state that forbids reuse.
    pub fn busy() -> Self {
        LinkState {
            pending: 1,
            ..Default::default()
        }
    }

    pub(super) fn at_rest(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.cskip == 0 && self.sskip == 0 && self.sheld == 0
    }

    /// Is the server idle and clean right now?
    pub fn is_clean(&self) -> bool {
        self.at_rest() && self.status == b'I'
    }

    /// Books a client message sent to the server; true if it asks for a
    /// ReadyForQuery (a query starts). A message PostgreSQL would take for a broken COPY FROM
    /// STDIN is refused: the server would drop it with an error that pgring could not match
    /// to its request, and the link would fall out of step.
    pub(super) fn on_request(&mut self, t: u8) -> Result<bool, ProtocolError> {
        let copy_message = matches!(
            t,
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL | tag::SYNC | tag::FLUSH
        );
        if !copy_message && self.copy_in.is_some_and(|c| !c.ended) {
            return Err(ProtocolError::DuringCopy(t));
        }
        if !copy_message && !self.after_exec.copy_ended && !matches!(t, tag::EXECUTE | tag::QUERY) {
            // (After the CopyDone or CopyFail, the server has left copy-in when it reads it.)
            self.after_exec.other.get_or_insert(t);
        }
        Ok(match t {
            tag::QUERY | tag::SYNC | tag::FUNCTION_CALL => {
                self.pending += 1;
                self.unsynced = false;
                match t {
                    tag::SYNC => self.sync_sent(),
                    tag::QUERY => self.after_exec = AfterExec::default(),
                    _ => {}
                }
                true
            }
            tag::FLUSH => false,
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                let ended = t != tag::COPY_DATA;
                self.after_exec.copy_sent = true;
                self.after_exec.copy_ended |= ended;
                if let Some(copy) = &mut self.copy_in {
                    copy.ended |= ended;
                }
                false
            }
            _ => {
                if t == tag::EXECUTE {
                    self.after_exec = AfterExec {
                        extended: true,
                        ..AfterExec::default()
                    };
                }
                self.unsynced = true;
                false
            }
        })
    }

    /// Books an extended-protocol message pgring answered itself (a Parse or a Close: nothing
    /// of it reached the server): the client's exchange is open until its Sync.
    pub(super) fn on_answered(&mut self) {
        self.unsynced = true;
    }

    /// An error made the server skip to the next Sync: `unanswered` Queries and FunctionCalls
    /// among what it skips will get no ReadyForQuery; if the client has not sent that Sync
    /// yet (`skipping`), the server waits for it, as after any unsynced extended message.
    pub(super) fn on_skipped(&mut self, unanswered: u32, skipping: bool) {
        self.pending = self.pending.saturating_sub(unanswered);
        self.unsynced |= skipping;
    }

    /// A Sync went to the server (and was counted as owing a ReadyForQuery).
    fn sync_sent(&mut self) {
        match &mut self.copy_in {
            Some(copy) if !copy.ended => copy.mid_syncs += 1,
            Some(_) => {}
            None => {
                // Before the server asked for the data: where the Sync lands depends on the
                // COPY messages sent before it.
                let after = &mut self.after_exec;
                match (after.copy_sent, after.copy_ended) {
                    (false, _) => after.syncs += 1,
                    (true, false) => after.mid_syncs += 1,
                    (true, true) => after.synced = true,
                }
            }
        }
    }

    /// Books a server message's tag for COPY FROM STDIN; returns how many Syncs already
    /// counted turned out to be ignored by the server (taken back from `pending`).
    ///
    /// At a CopyInResponse, `queued` is what the rewriter's queue saw around the request that
    /// started the COPY: exact where the client pipelined past it (another Execute or Query
    /// behind its CopyDone), which this state's own record of the messages since the last
    /// Execute or Query (all there is in session mode) is not.
    pub(super) fn on_server_copy(
        &mut self,
        t: u8,
        queued: Option<QueuedCopy>,
    ) -> Result<u32, ProtocolError> {
        Ok(match t {
            tag::COPY_IN_RESPONSE => {
                let after = std::mem::take(&mut self.after_exec);
                let copy = queued.unwrap_or(QueuedCopy {
                    extended: after.extended,
                    ignored: after.syncs,
                    mid_syncs: after.mid_syncs,
                    ended: after.copy_ended,
                    synced: after.synced,
                    behind: after.other,
                });
                if let Some(other) = copy.behind {
                    // Pipelined behind the COPY before its data: the server drops it.
                    return Err(ProtocolError::DuringCopy(other));
                }
                // The Syncs between the COPY's request and its data reach a server in copy-in.
                let ignored = copy.ignored.min(self.pending);
                self.pending -= ignored;
                // After the COPY, an extended-protocol server waits for a Sync (unless the
                // client pipelined one behind its CopyDone).
                self.unsynced |= copy.extended && !copy.synced;
                self.copy_in = Some(CopyIn {
                    mid_syncs: copy.mid_syncs,
                    ended: copy.ended,
                });
                ignored
            }
            tag::COMMAND_COMPLETE => match self.copy_in.take() {
                // The COPY ended well: the server read every Sync sent during it in copy-in.
                Some(copy) => {
                    let ignored = copy.mid_syncs.min(self.pending);
                    self.pending -= ignored;
                    ignored
                }
                None => 0,
            },
            tag::ERROR_RESPONSE => {
                self.copy_in = None;
                0
            }
            _ => 0,
        })
    }

    /// Classifies the server for a client that went away.
    pub fn boundary(&self) -> Boundary {
        match (self.at_rest(), self.status) {
            (true, b'I') => Boundary::Idle,
            (true, _) => Boundary::InTransaction,
            (false, _) => Boundary::Busy,
        }
    }
}
