//! The rewriter: a sans-IO state machine the relay consults once per
//! message header, in each direction, while prepared statements are on.
//!
//! Client → server ([`Rewriter::client_message`]):
//! - named Parse: a new name is mapped and, if the linked server lacks the
//!   statement, sent under its server name (else answered locally with
//!   ParseComplete, or, where the transaction block may have failed, checked
//!   by the server: see [`Entry::Reparse`]); a live name is refused with 42P05
//!   at the position PostgreSQL would refuse it (see [`Entry::Probe`]);
//! - Bind / Describe('S') of a mapped name: renamed, with a Parse injected
//!   first when the server lacks the statement (and Closes of evicted ones);
//!   a Bind's parameter values are never copied, only its head is rewritten;
//! - Close('S') of a name: forgotten and answered locally;
//! - Query `DEALLOCATE name` of a mapped name: forgotten, and a statement
//!   with no effect sent in its place, whose reply becomes the DEALLOCATE's;
//! - everything else is sent as is and only queued for its reply.
//!
//! Server → client ([`Rewriter::server_message`]): each reply is matched to
//! the oldest outstanding request, forwarded, swallowed or replaced, and
//! any locally answered requests that reach the front are emitted in
//! order. CommandComplete `DEALLOCATE ALL` / `DISCARD ALL` clears both the
//! client's names and the server's set.

use crate::error::{sqlstate, PgError};
use crate::protocol::backend::ErrorFields;
use crate::protocol::{build, frontend, tag, ProtocolError, HEADER_LEN};
use crate::stats::PoolStats;

use super::queue::{CopyIn, Entry, Forgotten, Queue, Refused, Req};
use super::server::Lru;
use super::sql::{self, Deallocate};
use super::{intern, server_name, ClientStatements, Splice, Statement, StatementId};

/// A statement name no server has: the Describe that makes the server fail
/// where a client's Parse reused a live name.
pub const PROBE_NAME: &[u8] = b"PGRING_NO_SUCH_STATEMENT";

/// What the server runs for a client's `DEALLOCATE name` (answered for the client): no rows,
/// no effect, refused in a failed transaction block.
pub const DEALLOCATE_STAND_IN: &str = "SELECT WHERE false";

/// The throwaway name a refused Parse's text is prepared under first (and closed at once), so
/// that PostgreSQL's own error for that text comes first, as it would.
pub const PARSE_PROBE_NAME: &[u8] = b"PGRING_PARSE_PROBE";

/// What the relay does with a client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it on as it is (it may stream in pieces).
    Pass,
    /// Too little of it is buffered to decide: stop here, read more.
    NeedMore,
    /// The first `n` bytes were replaced (or dropped) in the output; the
    /// rest of the message, if any, is sent on as it is.
    Took(usize),
    /// Answered by pgring (a Parse the server already has, a Close): nothing of it goes to
    /// the server, which owes nothing for it.
    Answered,
    /// Send it on as it is, but the server skips it (an earlier request of the exchange
    /// failed): a Query or FunctionCall that gets no ReadyForQuery.
    Skipped,
}

/// What the relay does with a server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Forward it as it is (it may stream in pieces).
    Stream,
    /// Wait until the whole message is buffered.
    NeedMore,
    /// The whole message was dealt with (forwarded, swallowed or replaced,
    /// and synthetic replies placed after it).
    Handled,
}

/// The state one relay step works on.
pub struct Rewriter<'a> {
    /// The client's names.
    pub client: &'a mut ClientStatements,
    /// The linked server's set.
    pub lru: &'a mut Lru,
    /// Outstanding requests.
    pub queue: &'a mut Queue,
    /// Counters (SHOW STATS).
    pub stats: &'a PoolStats,
}

impl Rewriter<'_> {
    /// Handles the client message at `at` (`total` bytes, maybe not all
    /// buffered yet) in `splice`. Local replies that are due go to
    /// `to_client`; `None` while the client is in the middle of a server
    /// message (part of an unsolicited NoticeResponse was forwarded), when
    /// they wait for [`release_held`](Self::release_held) at its end.
    pub fn client_message(
        &mut self,
        splice: &mut Splice<'_>,
        at: usize,
        total: usize,
        to_client: Option<&mut Vec<u8>>,
    ) -> Result<Action, ProtocolError> {
        let src = splice.src();
        let msg = &src[at..src.len().min(at + total)];
        if self.queue.skipping() && msg[0] != tag::SYNC {
            // An earlier request of this exchange failed before the client sent this one (a
            // pipelining driver's batch arrives in several reads): PostgreSQL ignores it, so
            // it goes as it is, with nothing mapped, prepared, evicted or answered for it.
            return Ok(match msg[0] {
                tag::QUERY | tag::FUNCTION_CALL => Action::Skipped,
                _ => Action::Pass,
            });
        }
        if matches!(msg[0], tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL) {
            self.queue.push_copy(msg[0]);
            if let Some(out) = to_client {
                self.drain_locals(out);
            }
            return Ok(Action::Pass);
        }
        if self.client.max() == 0 {
            // Prepared statements off: names go as they are, and the queue only follows the
            // replies (what an error makes the server skip, which request started a COPY).
            return Ok(Req::of(msg[0]).map_or(Action::Pass, |r| self.forward(r)));
        }
        let whole = msg.len() == total;
        let body = msg.get(HEADER_LEN..).unwrap_or_default();
        let action = match msg[0] {
            tag::PARSE => self.parse(splice, at, total, body, whole)?,
            tag::BIND => self.bind(splice, at, total, body, whole)?,
            tag::DESCRIBE => self.describe(splice, at, total, body, whole)?,
            tag::CLOSE => self.close(splice, at, total, body, whole)?,
            tag::QUERY => self.query(splice, at, total, body, whole),
            tag::EXECUTE => self.forward(Req::Execute),
            tag::SYNC => self.forward(Req::Sync),
            tag::FUNCTION_CALL => self.forward(Req::Query),
            _ => Action::Pass, // Flush, Copy*: no reply of their own
        };
        if let Some(out) = to_client {
            self.drain_locals(out);
        }
        Ok(action)
    }

    fn forward(&mut self, req: Req) -> Action {
        self.queue.push(Entry::Forward(req));
        Action::Pass
    }

    fn parse(
        &mut self,
        splice: &mut Splice<'_>,
        at: usize,
        total: usize,
        body: &[u8],
        whole: bool,
    ) -> Result<Action, ProtocolError> {
        match frontend::parse_name(body) {
            Some([]) => return Ok(self.forward(Req::Parse)),
            Some(_) if whole => {}
            None if whole => return Err(ProtocolError::Malformed { what: "Parse" }),
            _ => return Ok(Action::NeedMore),
        }
        let p = frontend::parse(body)?;
        let st = intern(p.rest);
        if self.must_wait(Some(st.id), p.name) {
            return Ok(Action::NeedMore);
        }
        self.stats.record_client_parse();
        let out = splice.replace(at, at + total);
        let refused = if self.client.contains(p.name) {
            Some(Refused::InUse)
        } else if self.client.would_exceed(p.name, p.rest.len()) {
            Some(Refused::Full)
        } else {
            None
        };
        if let Some(why) = refused {
            // PostgreSQL parses and analyses the statement before it looks at the name: a
            // syntax error, an unknown table or an aborted transaction win over 42P05. So the
            // text is parsed under a throwaway name and dropped, then the Describe fails.
            build::parse_raw(out, PARSE_PROBE_NAME, p.rest);
            self.queue.push(Entry::Swallowed(Req::Parse));
            build::close(out, b'S', PARSE_PROBE_NAME);
            self.queue.push(Entry::Swallowed(Req::Close));
            build::describe(out, b'S', PROBE_NAME);
            self.queue.push(Entry::Probe {
                name: p.name.into(),
                why,
            });
            return Ok(Action::Took(total));
        }
        self.client.insert(p.name, st.clone());
        let (id, name) = (st.id, p.name.into());
        if self.lru.touch(id) {
            if self.queue.block_may_have_failed() {
                // In a failed block PostgreSQL refuses the Parse (25P02) unless the text is a
                // COMMIT or ROLLBACK: the text is parsed under a throwaway name, and that
                // Parse's reply is the client's.
                build::parse_raw(out, PARSE_PROBE_NAME, p.rest);
                self.queue.push(Entry::Reparse { id, name });
                build::close(out, b'S', PARSE_PROBE_NAME);
                self.queue.push(Entry::Swallowed(Req::Close));
                return Ok(Action::Took(total));
            }
            self.queue.push(Entry::ParseComplete { id, name });
            return Ok(Action::Answered);
        }
        self.send_parse(out, &st);
        self.queue.push(Entry::Parse { id, name });
        Ok(Action::Took(total))
    }

    /// Must a message about the client's statement `name` (statement `id`, if mapped) wait
    /// for replies to an earlier exchange? It must if what it is rewritten to depends on a
    /// request of that exchange the server may yet skip ([`Queue::unsettled`]): about `id`
    /// or `name` themselves, or about the statement that preparing `id` would evict (undoing
    /// a skipped eviction puts the victim back, which is only right if the server had it).
    fn must_wait(&self, id: Option<StatementId>, name: &[u8]) -> bool {
        if self.queue.unsettled(id, name) {
            return true;
        }
        let evicts = |id| !self.lru.contains(id) && self.lru.len() >= self.client.max().max(1);
        match id.filter(|&id| evicts(id)).and_then(|_| self.lru.oldest()) {
            Some(victim) => self.queue.unsettled(Some(victim), &[]),
            None => false,
        }
    }

    /// Makes room, then prepares `st` on the server.
    fn send_parse(&mut self, out: &mut Vec<u8>, st: &Statement) {
        while self.lru.len() >= self.client.max().max(1) {
            let Some(old) = self.lru.pop_oldest() else {
                break;
            };
            build::close(out, b'S', &server_name(old));
            self.queue.push(Entry::InjectedClose(old));
        }
        build::parse_raw(out, &st.name, &st.rest);
        self.lru.insert(st.id);
        self.stats.record_server_parse();
    }

    /// Makes sure the server has `st` before a message that uses it.
    fn ensure(&mut self, out: &mut Vec<u8>, st: &Statement) {
        if !self.lru.touch(st.id) {
            self.send_parse(out, st);
            self.queue.push(Entry::InjectedParse(st.id));
        }
    }

    fn bind(
        &mut self,
        splice: &mut Splice<'_>,
        at: usize,
        total: usize,
        body: &[u8],
        whole: bool,
    ) -> Result<Action, ProtocolError> {
        let Some((portal, stmt, names_len)) = frontend::bind_names(body) else {
            if whole {
                return Err(ProtocolError::Malformed { what: "Bind" });
            }
            return Ok(Action::NeedMore);
        };
        if stmt.is_empty() {
            return Ok(self.forward(Req::Bind));
        }
        let st = self.client.get(stmt).cloned();
        if self.must_wait(st.as_ref().map(|s| s.id), stmt) {
            return Ok(Action::NeedMore);
        }
        self.stats.record_bind();
        let Some(st) = st else {
            return Ok(self.forward(Req::Bind)); // the server says 26000
        };
        let took = HEADER_LEN + names_len;
        let out = splice.replace(at, at + took);
        self.ensure(out, &st);
        build::bind_head(out, portal, &st.name, total - took);
        self.queue.push(Entry::Renamed(Req::Bind, st.id));
        Ok(Action::Took(took))
    }

    fn describe(
        &mut self,
        splice: &mut Splice<'_>,
        at: usize,
        total: usize,
        body: &[u8],
        whole: bool,
    ) -> Result<Action, ProtocolError> {
        if !whole {
            return Ok(Action::NeedMore);
        }
        let (kind, name) = frontend::target(body, "Describe")?;
        if kind != b'S' || name.is_empty() {
            return Ok(self.forward(Req::Describe));
        }
        let st = self.client.get(name).cloned();
        if self.must_wait(st.as_ref().map(|s| s.id), name) {
            return Ok(Action::NeedMore);
        }
        let Some(st) = st else {
            return Ok(self.forward(Req::Describe));
        };
        let out = splice.replace(at, at + total);
        self.ensure(out, &st);
        build::describe(out, b'S', &st.name);
        self.queue.push(Entry::Renamed(Req::Describe, st.id));
        Ok(Action::Took(total))
    }

    fn close(
        &mut self,
        splice: &mut Splice<'_>,
        at: usize,
        total: usize,
        body: &[u8],
        whole: bool,
    ) -> Result<Action, ProtocolError> {
        if !whole {
            return Ok(Action::NeedMore);
        }
        let (kind, name) = frontend::target(body, "Close")?;
        if kind != b'S' || name.is_empty() {
            return Ok(self.forward(Req::Close));
        }
        if self.queue.unsettled(None, name) {
            return Ok(Action::NeedMore);
        }
        // Like PostgreSQL, closing an unknown name is no error.
        let forgot = self.client.take(name).map(|st| Forgotten::new(name, &st));
        splice.replace(at, at + total);
        self.queue.push(Entry::CloseComplete(forgot));
        Ok(Action::Answered)
    }

    fn query(
        &mut self,
        splice: &mut Splice<'_>,
        at: usize,
        total: usize,
        body: &[u8],
        whole: bool,
    ) -> Action {
        match sql::maybe_deallocate_or_discard(body) {
            Some(false) => return self.forward(Req::Query),
            None | Some(true) if !whole => return Action::NeedMore,
            _ => {}
        }
        if sql::clears_all(body) {
            self.queue.push(Entry::ClearAll);
            return Action::Pass;
        }
        let name = match sql::deallocate(body) {
            Some(Deallocate::Name(n)) => n,
            _ => return self.forward(Req::Query),
        };
        if self.queue.unsettled(None, &name) {
            return Action::NeedMore;
        }
        let Some(st) = self.client.take(&name) else {
            return self.forward(Req::Query);
        };
        // A statement with no effect goes in its place: PostgreSQL does there what it does at
        // any Query (ends the implicit transaction, drops the unnamed statement, flushes the
        // replies before it), and refuses it in a failed transaction block as it would the
        // DEALLOCATE (whatever status the last ReadyForQuery said: an error pipelined before
        // it may have failed the block since). Its reply is turned into the DEALLOCATE's.
        build::query(splice.replace(at, at + total), DEALLOCATE_STAND_IN);
        self.queue
            .push(Entry::Deallocated(Forgotten::new(&name, &st)));
        Action::Took(total)
    }

    /// Emits the replies pgring owes for locally answered requests at the
    /// front of the queue.
    fn drain_locals(&mut self, out: &mut Vec<u8>) {
        while let Some(e) = self.queue.pop_local() {
            match e {
                Entry::ParseComplete { .. } => build::empty_message(out, tag::PARSE_COMPLETE),
                Entry::CloseComplete(_) => build::empty_message(out, tag::CLOSE_COMPLETE),
                _ => {}
            }
        }
    }

    /// Handles the server message at `at` (`total` bytes, maybe not all
    /// buffered yet).
    pub fn server_message(
        &mut self,
        splice: &mut Splice<'_>,
        at: usize,
        total: usize,
    ) -> Result<Reply, ProtocolError> {
        let src = splice.src();
        let t = src[at];
        let end = at + total;
        let ends = self
            .queue
            .front()
            .and_then(Entry::req)
            .is_some_and(|r| r.ends(t));
        let stand_in = matches!(self.queue.front(), Some(Entry::Deallocated(_)))
            && matches!(
                t,
                tag::ROW_DESCRIPTION | tag::COMMAND_COMPLETE | tag::ERROR_RESPONSE
            );
        if !ends && t != tag::COMMAND_COMPLETE && !stand_in {
            return Ok(Reply::Stream);
        }
        let Some(body) = src.get(at + HEADER_LEN..end) else {
            return Ok(Reply::NeedMore);
        };
        if stand_in {
            self.stand_in_reply(t, splice, at, end);
            return Ok(Reply::Handled);
        }
        if t == tag::COMMAND_COMPLETE && matches!(body, b"DEALLOCATE ALL\0" | b"DISCARD ALL\0") {
            self.cleared();
        }
        if let Some(e) = ends.then(|| self.queue.pop()).flatten() {
            self.reply_end(e, t, body, splice, at, end)?;
        }
        self.release_held(splice, end);
        Ok(Reply::Handled)
    }

    /// A message of the reply to [`DEALLOCATE_STAND_IN`], sent for a `DEALLOCATE name`
    /// (the oldest request): answered as PostgreSQL answers the DEALLOCATE. Its row
    /// description is dropped, its CommandComplete becomes `DEALLOCATE`; an error (a failed
    /// transaction block) goes on as it is, and the name means its statement again.
    fn stand_in_reply(&mut self, t: u8, splice: &mut Splice<'_>, at: usize, end: usize) {
        match t {
            tag::ROW_DESCRIPTION => {
                splice.replace(at, end);
            }
            tag::COMMAND_COMPLETE => build::command_complete(splice.replace(at, end), "DEALLOCATE"),
            _ => {
                if let Some(Entry::Deallocated(f)) = self.queue.front() {
                    self.client.insert(&f.name, intern(&f.rest));
                }
            }
        }
    }

    /// The server asks for COPY data: what the client sent around the request that started
    /// the COPY.
    pub fn copy_in(&self) -> CopyIn {
        self.queue.copy_in()
    }

    /// Queries and FunctionCalls the server skipped after an error earlier in their
    /// exchange, since the last call: no ReadyForQuery comes for them.
    pub fn take_unanswered(&mut self) -> u32 {
        self.queue.take_unanswered()
    }

    /// Is the server skipping what the client sends until its next Sync?
    pub fn skipping(&self) -> bool {
        self.queue.skipping()
    }

    /// The server ignored `n` of the client's Syncs (sent while it was in COPY FROM STDIN):
    /// their entries, the oldest outstanding Syncs, are dropped.
    pub fn forget_syncs(&mut self, n: u32) {
        self.queue.drop_syncs(n);
    }

    /// The server's prepared statements are all gone (CommandComplete `DEALLOCATE ALL` or
    /// `DISCARD ALL`), and with them the client's names, except those a pipelining client
    /// prepared after it: their Parse is still queued behind it.
    fn cleared(&mut self) {
        let mut ids = Vec::new();
        let mut names = Vec::new();
        for e in self.queue.after_front() {
            match e {
                Entry::Parse { id, name } => {
                    ids.push(*id);
                    if let Some(st) = self.client.get(name) {
                        names.push((name.clone(), st.clone()));
                    }
                }
                Entry::InjectedParse(id) => ids.push(*id),
                _ => {}
            }
        }
        self.client.clear();
        self.lru.clear();
        for (name, st) in names {
            self.client.insert(&name, st);
        }
        for id in ids {
            self.lru.insert(id);
        }
    }

    /// Emits, at `at` in the server's output, the local replies now at the
    /// front of the queue: after the reply they waited for, or after the
    /// server message that was streaming when they fell due.
    pub fn release_held(&mut self, splice: &mut Splice<'_>, at: usize) {
        if self.queue.front().is_some_and(Entry::is_local) {
            let out = splice.replace(at, at);
            self.drain_locals(out);
        }
    }

    /// The reply to `e` ended with message `t`.
    fn reply_end(
        &mut self,
        e: Entry,
        t: u8,
        body: &[u8],
        splice: &mut Splice<'_>,
        at: usize,
        end: usize,
    ) -> Result<(), ProtocolError> {
        if t == tag::READY_FOR_QUERY {
            self.queue.ready(body.first().copied().unwrap_or(b'I'));
        }
        let failed = t == tag::ERROR_RESPONSE;
        let code = if failed {
            ErrorFields::parse(body)?.code
        } else {
            String::new()
        };
        if failed && e.req().is_some_and(Req::skips_on_error) {
            // The server skips the rest of the exchange: undone newest first, so the set ends
            // as it was before them (a statement evicted, then prepared again, then skipped,
            // is still there).
            for skipped in self.queue.skip_to_sync().into_iter().rev() {
                self.undo(skipped, "");
            }
        }
        match e {
            Entry::Renamed(_, id) if code == sqlstate::INVALID_SQL_STATEMENT_NAME => {
                self.lru.remove(id); // lost behind our back: prepare again next time
            }
            e @ (Entry::Parse { .. } | Entry::InjectedParse(_) | Entry::Reparse { .. })
                if failed =>
            {
                self.undo(e, &code);
            }
            Entry::InjectedParse(_) | Entry::InjectedClose(_) | Entry::Swallowed(_) if !failed => {
                splice.replace(at, end);
            }
            Entry::Probe { name, why } => {
                self.refusal(&name, why).encode(splice.replace(at, end));
            }
            _ => {}
        }
        Ok(())
    }

    /// The error a refused Parse of `name` gets.
    fn refusal(&self, name: &[u8], why: Refused) -> PgError {
        let name = String::from_utf8_lossy(name);
        match why {
            Refused::InUse => PgError::error(
                sqlstate::DUPLICATE_PREPARED_STATEMENT,
                format!("prepared statement \"{name}\" already exists"),
            ),
            Refused::Full => PgError::error(
                sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                format!(
                    "prepared statement \"{name}\" would take this connection's prepared \
                     statements past max_client_prepared_memory ({} bytes, {} statements \
                     now): close statements the application no longer uses",
                    self.client.memory_cap(),
                    self.client.len()
                ),
            ),
        }
    }

    /// Undoes what a request that failed (with `code`) or was skipped
    /// would have done.
    fn undo(&mut self, e: Entry, code: &str) {
        // A Parse refused as a duplicate means the server has it after all.
        // A later Parse of it, still outstanding, is what the set's entry stands for now.
        let keep = |q: &Queue, id| code == sqlstate::DUPLICATE_PREPARED_STATEMENT || q.prepares(id);
        match e {
            Entry::Parse { id, name } => {
                if !keep(self.queue, id) {
                    self.lru.remove(id);
                }
                self.client.unmap(&name, id);
            }
            Entry::InjectedParse(id) if !keep(self.queue, id) => self.lru.remove(id),
            Entry::InjectedClose(id) => self.lru.insert_oldest(id),
            Entry::ParseComplete { id, name } | Entry::Reparse { id, name } => {
                self.client.unmap(&name, id)
            }
            // PostgreSQL never ran the Close or DEALLOCATE: the name still means its statement.
            Entry::CloseComplete(Some(f)) | Entry::Deallocated(f) => {
                self.client.insert(&f.name, intern(&f.rest))
            }
            _ => {}
        }
    }
}
