//! The ordered queue of outstanding requests on one link.
//!
//! PostgreSQL answers requests strictly in order, so the reply stream can be
//! cut into one reply per request: each [`Req`] kind knows which backend
//! tags end its reply. An [`Entry`] says what pgring does with that reply:
//! forward it, swallow it (requests pgring injected), replace it, or, for
//! requests pgring answers itself, emit a synthetic reply as soon as the
//! entry reaches the front (everything before it has been answered).
//!
//! After an ErrorResponse to an extended-protocol request, the server
//! ignores every message up to the next Sync (PostgreSQL `postgres.c`,
//! `ignore_till_sync`), simple Queries included; [`Queue::skip_to_sync`]
//! drops the same entries and hands them back so their effects can be
//! undone. If the client has not sent that Sync yet, the queue stays
//! [`skipping`](Queue::skipping): the rewriter passes what arrives before the
//! Sync through untouched, for the server to ignore.
//!
//! Two kinds of entry are not requests but marks in the client's stream: where a run of COPY
//! data began ([`Entry::CopyData`]) and where a CopyDone or CopyFail went ([`Entry::CopyEnd`]).
//! When the server asks for COPY data for the oldest request, they say which of the Syncs
//! sent behind it the server reads in copy-in (and ignores), and which requests come after the
//! COPY's end rather than inside it ([`Queue::copy_in`]). They need no reply and are dropped
//! when they reach the front.
//!
//! A simple Query (or FunctionCall) skipped that way gets no ReadyForQuery:
//! the queue counts those ([`Queue::take_unanswered`]) for the relay to take
//! back from the ones it waits for.
//!
//! What the rewriter decides for a message depends on the server's set and
//! the client's names as they will be once everything before it has run.
//! Within one exchange that holds whatever happens: an error skips the rest
//! of the exchange, and undoing the skipped requests newest first puts both
//! back. Across exchanges it does not: a Close or Parse of an earlier exchange
//! that the server then skips would leave a later exchange rewritten for a set
//! the server does not have (a Parse injected for a statement it still has:
//! 42P05). So a message about a statement or name that an earlier, unanswered
//! exchange changes waits for that change's reply, and every such message
//! waits for an outstanding `DEALLOCATE ALL` / `DISCARD ALL`
//! ([`Queue::unsettled`]). Only pipelining clients ever wait, and only while
//! statements come and go.

use std::collections::VecDeque;

use crate::protocol::tag;

use super::StatementId;

/// The shape of a request's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Req {
    /// Parse: ParseComplete.
    Parse,
    /// Bind: BindComplete.
    Bind,
    /// Describe: \[ParameterDescription\] RowDescription | NoData.
    Describe,
    /// Close: CloseComplete.
    Close,
    /// Execute: rows, then CommandComplete | EmptyQueryResponse |
    /// PortalSuspended (COPY runs inside, ending with CommandComplete).
    Execute,
    /// Sync: ReadyForQuery (an error at commit comes before it).
    Sync,
    /// Query or FunctionCall: everything up to ReadyForQuery.
    Query,
}

impl Req {
    /// The request a frontend message with this tag is, if it gets a reply.
    pub fn of(t: u8) -> Option<Req> {
        Some(match t {
            tag::PARSE => Req::Parse,
            tag::BIND => Req::Bind,
            tag::DESCRIBE => Req::Describe,
            tag::CLOSE => Req::Close,
            tag::EXECUTE => Req::Execute,
            tag::SYNC => Req::Sync,
            tag::QUERY | tag::FUNCTION_CALL => Req::Query,
            _ => return None,
        })
    }

    /// Does a backend message with this tag end the reply?
    pub fn ends(self, t: u8) -> bool {
        match self {
            Req::Parse => t == tag::PARSE_COMPLETE || t == tag::ERROR_RESPONSE,
            Req::Bind => t == tag::BIND_COMPLETE || t == tag::ERROR_RESPONSE,
            Req::Describe => matches!(t, tag::ROW_DESCRIPTION | tag::NO_DATA | tag::ERROR_RESPONSE),
            Req::Close => t == tag::CLOSE_COMPLETE || t == tag::ERROR_RESPONSE,
            Req::Execute => matches!(
                t,
                tag::COMMAND_COMPLETE
                    | tag::EMPTY_QUERY_RESPONSE
                    | tag::PORTAL_SUSPENDED
                    | tag::ERROR_RESPONSE
            ),
            Req::Sync | Req::Query => t == tag::READY_FOR_QUERY,
        }
    }

    /// Does an error in its reply make the server skip to Sync?
    pub fn skips_on_error(self) -> bool {
        !matches!(self, Req::Sync | Req::Query)
    }
}

/// Why pgring refuses a client's named Parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The name is in use (42P05, as PostgreSQL).
    InUse,
    /// It would take the client past `max_client_prepared_memory` (53400).
    Full,
}

/// A client name a local Close or `DEALLOCATE` unmapped, with its statement's Parse body (to
/// map it again if PostgreSQL would have skipped that request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    /// The client's name.
    pub name: Box<[u8]>,
    /// The statement's Parse body.
    pub rest: Box<[u8]>,
}

impl Forgotten {
    /// `name`, which meant `st`.
    pub fn new(name: &[u8], st: &super::Statement) -> Self {
        Forgotten {
            name: name.into(),
            rest: st.rest.clone(),
        }
    }
}

/// What pgring does with one request's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A client request sent as it was: its reply is forwarded.
    Forward(Req),
    /// A client Bind or Describe renamed to statement `id`: forwarded; a
    /// 26000 reply means the server lost `id` behind pgring's back.
    Renamed(Req, StatementId),
    /// A client's named Parse sent under the server name: forwarded; undone
    /// (server set and client name) if it fails or is skipped.
    Parse {
        /// The statement.
        id: StatementId,
        /// The client's name for it.
        name: Box<[u8]>,
    },
    /// pgring's Parse of `id` before a Bind/Describe: ParseComplete is
    /// swallowed, an error is the client's to see.
    InjectedParse(StatementId),
    /// pgring's Close of evicted `id`: the reply is swallowed.
    InjectedClose(StatementId),
    /// pgring's request that changes nothing it keeps track of (the Parse and Close of a
    /// refused Parse's text, under a throwaway name): its reply is swallowed, an error is the
    /// client's to see.
    Swallowed(Req),
    /// A Describe of a name no server has, sent so the server fails (and
    /// skips to Sync, aborting the transaction) exactly where PostgreSQL
    /// would have failed the client's Parse; its error is replaced by
    /// pgring's refusal of the client's `name` (42P05, or 53400).
    Probe {
        /// The client's statement name.
        name: Box<[u8]>,
        /// Why its Parse is refused.
        why: Refused,
    },
    /// A client's named Parse of `id`, which the server already has, sent as the Parse and
    /// Close of its text under a throwaway name because the transaction block may have failed
    /// (PostgreSQL then refuses every Parse but a COMMIT's or ROLLBACK's, with 25P02): the
    /// Parse's reply is forwarded as the client's; the name is unmapped if it fails or is
    /// skipped.
    Reparse {
        /// The statement.
        id: StatementId,
        /// The client's name for it.
        name: Box<[u8]>,
    },
    /// Answered locally: ParseComplete (the server already had `id`).
    ParseComplete {
        /// The statement.
        id: StatementId,
        /// The client's name for it (unmapped if the Parse is skipped).
        name: Box<[u8]>,
    },
    /// Answered locally: CloseComplete; the name it unmapped, if any (put back if the
    /// server skips past this point).
    CloseComplete(Option<Forgotten>),
    /// A Query `DEALLOCATE name` of a mapped name, answered for the client (its name forgotten,
    /// and mapped again if PostgreSQL refuses it) and sent as `DEALLOCATE_STAND_IN`, whose
    /// reply becomes the DEALLOCATE's.
    Deallocated(Forgotten),
    /// A Query `DEALLOCATE ALL` or `DISCARD ALL` sent as it was: until its reply nobody knows
    /// whether the server's set is about to empty (it fails in an aborted transaction, DISCARD
    /// ALL in any transaction block), so nothing that depends on the set goes out meanwhile.
    ClearAll,
    /// Not a request: where the client's first CopyData after other messages went in the
    /// stream ([`Queue::copy_in`]). Dropped without a reply when it reaches the front.
    CopyData,
    /// Not a request: where the client's CopyDone or CopyFail went in the stream. Requests
    /// after it reach a server that has left copy-in ([`Queue::copy_in`]). Dropped without
    /// a reply when it reaches the front.
    CopyEnd,
}

/// What the client sent around the COPY FROM STDIN the server just asked data for (the oldest
/// outstanding request), as far as it has: [`Queue::copy_in`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyIn {
    /// It was started by an Execute (after it the server waits for a Sync), not a Query.
    pub extended: bool,
    /// Syncs between the request and its data: the server in copy-in ignores them.
    pub ignored: u32,
    /// Syncs amid the data: ignored if the COPY ends well; after an error in the data it cannot
    /// be told whether the server read them before the error or after.
    pub mid_syncs: u32,
    /// The client sent the CopyDone or CopyFail.
    pub ended: bool,
    /// A Sync followed the CopyDone or CopyFail: the server reads it after copy-in.
    pub synced: bool,
    /// The tag of the first request (other than Sync) sent after the request and before the
    /// COPY's end: PostgreSQL takes it for a broken COPY and drops it.
    pub behind: Option<u8>,
}

impl Entry {
    /// The reply shape, for requests that went to the server.
    pub fn req(&self) -> Option<Req> {
        match self {
            Entry::Forward(r) | Entry::Renamed(r, _) | Entry::Swallowed(r) => Some(*r),
            Entry::ClearAll | Entry::Deallocated(_) => Some(Req::Query),
            Entry::Parse { .. } | Entry::InjectedParse(_) | Entry::Reparse { .. } => {
                Some(Req::Parse)
            }
            Entry::InjectedClose(_) => Some(Req::Close),
            Entry::Probe { .. } => Some(Req::Describe),
            Entry::ParseComplete { .. }
            | Entry::CloseComplete(_)
            | Entry::CopyData
            | Entry::CopyEnd => None,
        }
    }

    /// The tag of the client message this stands for.
    pub fn tag(&self) -> u8 {
        match self {
            Entry::Forward(r) | Entry::Renamed(r, _) | Entry::Swallowed(r) => match r {
                Req::Parse => tag::PARSE,
                Req::Bind => tag::BIND,
                Req::Describe => tag::DESCRIBE,
                Req::Close => tag::CLOSE,
                Req::Execute => tag::EXECUTE,
                Req::Sync => tag::SYNC,
                Req::Query => tag::QUERY,
            },
            Entry::Parse { .. }
            | Entry::InjectedParse(_)
            | Entry::Reparse { .. }
            | Entry::ParseComplete { .. } => tag::PARSE,
            Entry::InjectedClose(_) | Entry::CloseComplete(_) => tag::CLOSE,
            Entry::Probe { .. } => tag::PARSE,
            Entry::Deallocated(_) | Entry::ClearAll => tag::QUERY,
            Entry::CopyData => tag::COPY_DATA,
            Entry::CopyEnd => tag::COPY_DONE,
        }
    }

    /// Is this answered by pgring rather than the server?
    pub fn is_local(&self) -> bool {
        self.req().is_none()
    }
}

/// Outstanding requests, oldest first. The ring is reused across leases, so
/// queueing allocates nothing once warm.
#[derive(Debug, Default)]
pub struct Queue {
    entries: VecDeque<Entry>,
    /// The server is ignoring messages until the client's next Sync.
    skipping: bool,
    /// Queries and FunctionCalls dropped by [`skip_to_sync`](Self::skip_to_sync): the server
    /// skipped them, so their ReadyForQuery never comes.
    unanswered: u32,
    /// The last ReadyForQuery said the transaction block had failed (status `E`).
    failed_block: bool,
}

impl Queue {
    /// Appends a request (a Sync ends the server's skipping).
    pub fn push(&mut self, e: Entry) {
        if e == Entry::Forward(Req::Sync) {
            self.skipping = false;
        }
        self.entries.push_back(e);
    }

    /// The oldest outstanding request.
    pub fn front(&self) -> Option<&Entry> {
        self.entries.front()
    }

    /// Removes the oldest.
    pub fn pop(&mut self) -> Option<Entry> {
        self.entries.pop_front()
    }

    /// Removes the oldest if pgring answers it.
    pub fn pop_local(&mut self) -> Option<Entry> {
        if self.entries.front()?.is_local() {
            self.entries.pop_front()
        } else {
            None
        }
    }

    /// Drops every entry before the next Sync and returns them, oldest first. With no Sync
    /// queued, the server goes on skipping what the client sends until its Sync.
    pub fn skip_to_sync(&mut self) -> Vec<Entry> {
        let end = self
            .entries
            .iter()
            .position(|e| *e == Entry::Forward(Req::Sync));
        self.skipping = end.is_none();
        let skipped: Vec<Entry> = self
            .entries
            .drain(..end.unwrap_or(self.entries.len()))
            .collect();
        self.unanswered += skipped
            .iter()
            .filter(|e| e.req() == Some(Req::Query))
            .count() as u32;
        skipped
    }

    /// The server said ReadyForQuery with transaction `status`.
    pub fn ready(&mut self, status: u8) {
        self.failed_block = status == b'E';
    }

    /// May the transaction block have failed by the time the server reaches the next request?
    /// Known at rest (the last ReadyForQuery said so); unknown while an earlier exchange is
    /// still outstanding, as any statement of it may open a block and fail it. (An error in
    /// the current exchange makes the server skip the request anyway.)
    pub fn block_may_have_failed(&self) -> bool {
        self.failed_block
            || self
                .entries
                .iter()
                .any(|e| matches!(e.req(), Some(Req::Sync | Req::Query)))
    }

    /// Takes the count of skipped Queries and FunctionCalls (their ReadyForQuery never comes).
    pub fn take_unanswered(&mut self) -> u32 {
        std::mem::take(&mut self.unanswered)
    }

    /// Does an exchange before the client's current one still have a request outstanding that
    /// the server may yet skip, and whose undoing would change what a message about the
    /// client's statement `name` (statement `id`, if mapped) is rewritten to: a change to
    /// whether the server has `id` (a Parse, pgring's Parse or Close), or to what `name` maps
    /// to (the client's Parse of it, answered by the server or locally, or a Close or
    /// `DEALLOCATE` of it answered locally)? Or is a `DEALLOCATE ALL` / `DISCARD ALL`
    /// outstanding, in any exchange? (Client names in
    /// the queue are never empty: `&[]` asks about `id` alone.)
    pub fn unsettled(&self, id: Option<StatementId>, name: &[u8]) -> bool {
        let mut earlier = false;
        for e in self.entries.iter().rev() {
            let hit = match e {
                // Whether the server still has any statement (and the client any name) is
                // known at its reply.
                Entry::ClearAll => return true,
                Entry::Forward(Req::Sync) => {
                    earlier = true;
                    false
                }
                Entry::Parse { id: s, name: n } => Some(*s) == id || **n == *name,
                Entry::InjectedParse(s) | Entry::InjectedClose(s) => Some(*s) == id,
                Entry::ParseComplete { name: n, .. } | Entry::Reparse { name: n, .. } => {
                    **n == *name
                }
                Entry::CloseComplete(Some(f)) | Entry::Deallocated(f) => *f.name == *name,
                _ => false,
            };
            if hit && earlier {
                return true;
            }
        }
        false
    }

    /// Is the server ignoring what the client sends until its next Sync (which nothing queued
    /// yet answers)?
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// Drops the oldest `n` Sync entries, wherever they are (the relay decides which Syncs the
    /// server ignored: those sent during a COPY FROM STDIN).
    pub fn drop_syncs(&mut self, n: u32) {
        let mut left = n;
        self.entries.retain(|e| {
            let drop = left > 0 && *e == Entry::Forward(Req::Sync);
            left -= u32::from(drop);
            !drop
        });
    }

    /// Books a COPY message of the client's (CopyData, CopyDone, CopyFail) in stream order.
    pub fn push_copy(&mut self, t: u8) {
        let data_last = self
            .entries
            .iter()
            .rev()
            .find(|e| **e != Entry::Forward(Req::Sync))
            .is_some_and(|e| *e == Entry::CopyData);
        if t == tag::COPY_DATA {
            if !data_last {
                self.entries.push_back(Entry::CopyData);
            }
        } else {
            self.entries.push_back(Entry::CopyEnd);
        }
    }

    /// The server asks for COPY data for the oldest request it answers: what the client sent
    /// after that request, up to the first Sync after the COPY's end.
    pub fn copy_in(&self) -> CopyIn {
        let mut later = self.entries.iter().skip_while(|e| e.is_local());
        let mut copy = CopyIn {
            extended: later.next() == Some(&Entry::Forward(Req::Execute)),
            ..CopyIn::default()
        };
        let mut data = false;
        for e in later {
            match e {
                Entry::CopyData => data = true,
                Entry::CopyEnd => copy.ended = true,
                Entry::Forward(Req::Sync) if copy.ended => {
                    copy.synced = true;
                    break;
                }
                Entry::Forward(Req::Sync) if data => copy.mid_syncs += 1,
                Entry::Forward(Req::Sync) => copy.ignored += 1,
                e if !copy.ended && !e.is_local() => {
                    copy.behind.get_or_insert(e.tag());
                }
                _ => {}
            }
        }
        copy
    }

    /// Does an outstanding request prepare statement `id` (a later Parse of it, when an earlier
    /// one is being undone)?
    pub fn prepares(&self, id: StatementId) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e, Entry::Parse { id: p, .. } | Entry::InjectedParse(p) if *p == id))
    }

    /// The requests sent after the oldest one.
    pub fn after_front(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().skip(1)
    }

    /// Nothing outstanding.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of outstanding requests.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.skipping = false;
        self.unanswered = 0;
        self.failed_block = false;
    }
}
