//! The bodies of pgring's fuzz targets, kept in a library so that the
//! libFuzzer binaries (`fuzz_targets/`) and any other driver share them.
//!
//! Each target feeds bytes a peer controls to the code that parses them and
//! checks what must hold whatever the input: no panic, and for the framing
//! code that what it splits off stays inside the buffer. A protocol error is
//! a normal outcome (the connection would be closed with 08P01), so every
//! target stops at the first one.

use pgring::auth::hba::Hba;
use pgring::auth::ident::IdentMap;
use pgring::auth::scram::{ScramClient, ScramServer, Verifier};
use pgring::auth::userlist::{Secret, UserList};
use pgring::prepared::ServerStatements;
use pgring::protocol::{build, next_frame, startup};
use pgring::relay::testing::Pair;

/// Frontend framing and every frontend/backend/startup decoder.
pub fn frontend(data: &[u8]) {
    startup_packet(data);
    let Some((&sel, mut buf)) = data.split_first() else {
        return;
    };
    let max = [16, 1 << 20, u32::MAX >> 1][usize::from(sel % 3)];
    while let Ok(Some((frame, used))) = next_frame(buf, max) {
        assert_eq!(used, 5 + frame.body.len());
        assert!(used <= buf.len());
        pgring::protocol::decode_every_body(frame.body);
        buf = &buf[used..];
    }
}

fn startup_packet(data: &[u8]) {
    let Ok(Some(len)) = startup::startup_len(data) else {
        return;
    };
    let packet = data.get(..len).unwrap_or(data);
    if let Ok(startup::StartupPacket::Startup { params, .. }) = startup::parse_startup(packet) {
        for (k, v) in &params {
            if k == "options" {
                startup::split_options(v);
            }
        }
    }
}

/// SCRAM exchanges with a peer speaking arbitrary messages: pgring as the
/// server (client messages come from clients) and as the client (server
/// messages from PostgreSQL).
pub fn auth(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (first, last) = split2(rest);
    if sel & 1 == 0 {
        let verifier = Verifier::from_password("secret", b"salty", 1);
        let mut server = ScramServer::new(verifier);
        if server.handle_client_first(first).is_ok() {
            let _ = server.handle_client_final(last);
            let _ = server.client_key();
        }
    } else if cheap_iterations(first) {
        let mut client = ScramClient::new("secret");
        client.client_first();
        if client.handle_server_first(first).is_ok() {
            let _ = client.verify_server_final(last);
        }
    }
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = Verifier::parse(text);
        let _ = Secret::parse(text);
    }
}

/// The client role pays for the server's iteration count: keep runs fast.
fn cheap_iterations(msg: &[u8]) -> bool {
    let text = String::from_utf8_lossy(msg);
    text.split(',')
        .filter_map(|a| a.strip_prefix("i="))
        .all(|i| i.len() <= 2)
}

/// Splits at the first 0xff byte (a separator libFuzzer learns quickly).
fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The auth files (hba, ident map, userlist) and the TOML config.
pub fn files(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match sel % 4 {
        0 => {
            let _ = Hba::parse(text, &|name| Ok(format!("{name}, a b\n#c\n\"q\"")));
        }
        1 => {
            let _ = IdentMap::parse(text);
        }
        2 => {
            let _ = UserList::parse(text);
        }
        _ => {
            let _ = pgring::config::Config::from_toml_str(text, "fuzz.toml");
        }
    }
}

/// A client and a server exchanging message streams through the relay's
/// real scan steps with prepared statements on.
///
/// The input is a little program: each op appends a (mostly well-formed)
/// message to the client's or the server's pending bytes, appends raw
/// bytes, or delivers a chunk of pending bytes to the relay. A simulated
/// server can also answer what reached it, the way PostgreSQL would.
pub fn relay(data: &[u8]) {
    let mut ops = Ops { data, pos: 0 };
    // 0: prepared statements off (names pass through; the queue only follows replies).
    let max = usize::from(ops.byte() % 5);
    let mut s = Session {
        pair: Pair::new(max),
        cpend: Vec::new(),
        spend: Vec::new(),
        sim: Sim::default(),
        raw: false,
        to_client: Vec::new(),
        other: None,
        unsynced: false,
    };
    while ops.pos < ops.data.len() {
        if s.op(&mut ops).is_err() {
            return; // the relay closes that connection: fine
        }
    }
    if s.settle().is_ok() && !s.raw && !s.unsynced && s.sim.at_rest() {
        // Every request answered and the server idle outside any transaction: the link must
        // be free to release, or a client that sent something unusual keeps a server for good.
        assert!(
            s.pair.may_release(),
            "the server is at rest but the link still waits: {:?}",
            s.pair.state()
        );
    }
}

struct Ops<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Ops<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }
}

struct Session {
    pair: Pair,
    cpend: Vec<u8>,
    spend: Vec<u8>,
    sim: Sim,
    /// Raw bytes were injected: streams may be garbage.
    raw: bool,
    /// Everything the client has received, to check it is whole messages.
    to_client: Vec<u8>,
    /// The pool's other server, with its simulator.
    other: Option<(ServerStatements, Sim)>,
    /// The client sent extended-protocol messages since its last Sync (or Query): its
    /// exchange is open.
    unsynced: bool,
}

type Step = Result<(), pgring::error::Error>;

const NAMES: [&[u8]; 4] = [b"s1", b"s2", b"PGRING_NO_SUCH_STATEMENT", b"x\"y"];
const SQLS: [&str; 4] = ["SELECT 1", "SELECT $1", "deallocate", "COPY t FROM STDIN"];

/// `FUZZ_TRACE=1` prints every delivery (to read a minimised crash); read once.
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![t];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(parts: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(p);
        b.push(0);
    }
    b
}

impl Session {
    fn op(&mut self, ops: &mut Ops<'_>) -> Step {
        let op = ops.byte();
        let arg = ops.byte();
        let name = NAMES[usize::from(arg % 4)];
        let name = if arg & 0x80 != 0 { &b""[..] } else { name };
        self.unsynced = match op % 20 {
            0..=4 => true,
            5 | 7 | 16 => false,
            17 if arg & 0xc0 == 0x40 => false,
            19 if arg & 0x80 != 0 => false,
            _ => self.unsynced,
        };
        match op % 20 {
            0 => {
                let sql = SQLS[usize::from((arg >> 2) % 4)];
                let mut rest = cstr(&[sql.as_bytes()]);
                rest.extend_from_slice(&[0, 0]);
                build::parse_raw(&mut self.cpend, name, &rest);
            }
            1 => {
                let mut body = cstr(&[b"", name]);
                body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]);
                self.cpend.extend(msg(b'B', &body));
            }
            2 => build::describe(
                &mut self.cpend,
                if arg & 0x40 != 0 { b'P' } else { b'S' },
                name,
            ),
            3 => build::close(
                &mut self.cpend,
                if arg & 0x40 != 0 { b'P' } else { b'S' },
                name,
            ),
            4 => self.cpend.extend(msg(b'E', b"\0\0\0\0\0")),
            5 => build::sync(&mut self.cpend),
            6 => self.cpend.extend(msg(b'H', b"")),
            7 => {
                let sql = [
                    "DEALLOCATE s1",
                    "deallocate prepare S2;",
                    "DEALLOCATE ALL",
                    "DISCARD ALL",
                    "SELECT 1",
                ][usize::from(arg % 5)];
                build::query(&mut self.cpend, sql);
            }
            8 => {
                self.raw = true;
                self.sim.tainted = true;
                self.cpend
                    .extend_from_slice(ops.bytes(usize::from(arg % 48)));
            }
            9 | 10 => self.deliver_client(usize::from(arg) * 3)?,
            11 => self.sim.answer_all(&mut self.spend),
            12 => {
                self.raw = true;
                self.sim.tainted = true;
                self.spend
                    .extend_from_slice(ops.bytes(usize::from(arg % 48)));
            }
            13 | 14 => self.deliver_server(usize::from(arg) * 3)?,
            15 => self.spontaneous(arg),
            16 => self.cpend.extend(msg(b'F', b"\0\0\0\x01\0\0\0\0\0")),
            17 if arg & 0x80 != 0 => self.relink(),
            17 if arg & 0x40 != 0 => {
                let sql = ["BEGIN", "COMMIT", "SELECT 1/0", "ROLLBACK"][usize::from(arg % 4)];
                build::query(&mut self.cpend, sql);
            }
            17 => match arg % 4 {
                0 | 1 => self.cpend.extend(msg(b'd', &[arg; 7])),
                2 => self.cpend.extend(msg(b'c', b"")),
                _ => self.cpend.extend(msg(b'f', b"no\0")),
            },
            19 if arg & 0x80 != 0 => build::query(&mut self.cpend, "COPY t FROM STDIN"),
            18 => {
                // A server reply the simulator would not send: desync.
                self.raw = true;
                self.sim.tainted = true;
                let t = b"123tnTsCIZEN"[usize::from(arg % 12)];
                let body: &[u8] = match t {
                    b'Z' => b"I",
                    b'E' => b"SERROR\0C26000\0Mx\0\0",
                    b'C' => b"DEALLOCATE ALL\0",
                    _ => b"",
                };
                self.spend.extend(msg(t, body));
            }
            _ => {
                self.deliver_client(usize::MAX)?;
                self.sim.answer_all(&mut self.spend);
                self.deliver_server(usize::MAX)?;
            }
        }
        Ok(())
    }

    /// Messages a server sends on its own (notices, parameter changes), of
    /// any size.
    fn spontaneous(&mut self, arg: u8) {
        let big = vec![b'x'; usize::from(arg) * 40];
        match arg % 3 {
            0 => {
                let mut body = cstr(&[b"SNOTICE", b"C00000", b"M"]);
                body.pop();
                body.extend_from_slice(&big);
                body.extend_from_slice(&[0, 0]);
                self.spend.extend(msg(b'N', &body));
            }
            1 => build::parameter_status(&mut self.spend, "application_name", "fuzz"),
            _ => self
                .spend
                .extend(msg(b'A', &cstr(&[b"\0\0\0\x01chan", &big]))),
        }
    }

    /// The transaction ended: the client's next lease may be on the other
    /// server (with its own prepared set), as in the real pool.
    fn relink(&mut self) {
        if !self.pair.may_release() {
            return;
        }
        if !self.raw {
            // Released: every reply reached pgring, and what the server has not answered yet
            // needs no answer. Anything else would reach the pool's next client.
            // (A notice, a parameter change or a notification may come at any time.)
            let mut pos = 0;
            while let Ok(Some((f, used))) = next_frame(&self.spend[pos..], u32::MAX >> 1) {
                assert!(
                    b"NSA".contains(&f.tag),
                    "released with a reply in flight: {:?}",
                    char::from(f.tag)
                );
                pos += used;
            }
            let mut late = Vec::new();
            self.sim.answer_all(&mut late);
            assert!(
                late.is_empty() && !self.sim.skipping && self.sim.copy.is_none(),
                "released while the server still owed {late:?} (skipping {}, copy {:?})",
                self.sim.skipping,
                self.sim.copy
            );
        }
        let other = std::mem::take(&mut self.other);
        let (server, mut sim) = other.unwrap_or_default();
        sim.tainted |= self.raw;
        let old = self.pair.relink(server);
        let old_sim = std::mem::replace(&mut self.sim, sim);
        self.other = Some((old, old_sim));
        self.spend.clear();
    }

    /// Delivers and answers until nothing moves (a client message may wait for a reply).
    fn settle(&mut self) -> Step {
        loop {
            self.deliver_client(usize::MAX)?;
            self.sim.answer_all(&mut self.spend);
            if self.spend.is_empty() {
                return Ok(());
            }
            self.deliver_server(usize::MAX)?;
        }
    }

    fn deliver_client(&mut self, n: usize) -> Step {
        let n = n.min(self.cpend.len());
        let chunk: Vec<u8> = self.cpend.drain(..n).collect();
        let (to_server, to_client) = self.pair.try_client_sends(&chunk)?;
        if tracing() {
            eprintln!(
                "client sends {:?}\n  server gets {:?}\n  client gets {:?}",
                String::from_utf8_lossy(&chunk),
                String::from_utf8_lossy(&to_server),
                String::from_utf8_lossy(&to_client)
            );
        }
        self.sim.receive(&to_server);
        self.client_gets(&to_client);
        Ok(())
    }

    fn deliver_server(&mut self, n: usize) -> Step {
        let n = n.min(self.spend.len());
        let chunk: Vec<u8> = self.spend.drain(..n).collect();
        let out = self.pair.try_server_sends(&chunk)?;
        if tracing() {
            eprintln!(
                "server sends {:?}\n  client gets {:?}",
                String::from_utf8_lossy(&chunk),
                String::from_utf8_lossy(&out)
            );
        }
        self.client_gets(&out);
        // As the relay does after reading the server: client bytes that waited for a reply
        // (behind a DEALLOCATE ALL) are scanned again.
        self.deliver_client(0)
    }

    /// What the client receives must split into whole messages: pgring's
    /// own replies never land inside a message the server is streaming.
    fn client_gets(&mut self, bytes: &[u8]) {
        self.to_client.extend_from_slice(bytes);
        if self.raw {
            return;
        }
        let mut pos = 0;
        while let Ok(Some((f, used))) = next_frame(&self.to_client[pos..], u32::MAX >> 1) {
            assert!(
                b"123tnTsCIZENSAKdcGHWDV".contains(&f.tag),
                "client got a message with tag {:?}: stream {:?}",
                char::from(f.tag),
                self.to_client
            );
            pos += used;
        }
        self.to_client.drain(..pos);
    }
}

/// A toy PostgreSQL: prepared statement names, skip-to-Sync after an
/// error, one reply per request, transaction status.
struct Sim {
    input: Vec<u8>,
    names: std::collections::HashSet<Vec<u8>>,
    skipping: bool,
    status: u8,
    /// The server was told something pgring did not say (raw bytes): its names may differ
    /// from pgring's view, so the check below is off.
    tainted: bool,
    /// In COPY FROM STDIN, started by a Query (true) or an Execute (false).
    copy: Option<bool>,
    /// Statement texts by name (the unnamed one under ""), to know a COPY's Execute.
    texts: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    /// The unnamed portal runs a COPY.
    portal_copy: bool,
    /// Extended-protocol messages were read since the last Sync (or Query): a ParseComplete
    /// may still sit in PostgreSQL's output buffer.
    unsynced: bool,
    /// A COPY failed after the client sent a Sync among its data: whether PostgreSQL read
    /// that Sync before or after its error, pgring cannot know, so it keeps the server
    /// (README: closed when its client leaves). The rest check is off.
    copy_sync_unknown: bool,
    /// A Sync arrived during the current COPY's data.
    copy_synced: bool,
}

impl Default for Sim {
    fn default() -> Self {
        Sim {
            input: Vec::new(),
            names: Default::default(),
            skipping: false,
            status: b'I',
            tainted: false,
            copy: None,
            texts: Default::default(),
            portal_copy: false,
            unsynced: false,
            copy_sync_unknown: false,
            copy_synced: false,
        }
    }
}

impl Sim {
    /// Idle outside a transaction, with every request answered and nothing to skip: a pooler
    /// may hand this server to another client.
    fn at_rest(&self) -> bool {
        self.input.is_empty()
            && !self.tainted
            && !self.skipping
            && !self.unsynced
            && self.copy.is_none()
            && !self.copy_sync_unknown
            && self.status == b'I'
    }

    fn receive(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    fn answer_all(&mut self, out: &mut Vec<u8>) {
        let mut pos = 0;
        while let Ok(Some((f, used))) = next_frame(&self.input[pos..], u32::MAX >> 1) {
            let body = f.body.to_vec();
            self.answer(f.tag, &body, out);
            pos += used;
        }
        self.input.drain(..pos);
    }

    /// pgring names server statements itself (`PGRING_<hash>`): PostgreSQL must never find
    /// one missing or already there. (`PGRING_NO_SUCH_STATEMENT` is the probe, and a client
    /// name too.)
    fn check_own_name(&self, name: &[u8], code: &str) {
        assert!(
            self.tainted || !name.starts_with(b"PGRING_") || name == b"PGRING_NO_SUCH_STATEMENT",
            "the server answered {code} for pgring's own statement {:?}",
            String::from_utf8_lossy(name)
        );
    }

    fn error(&mut self, code: &str, out: &mut Vec<u8>) {
        build::error_response(out, build::Severity::Error, code, "sim");
        self.skipping = true;
        self.fail();
    }

    /// An error inside a transaction block aborts it.
    fn fail(&mut self) {
        if self.status == b'T' {
            self.status = b'E';
        }
    }

    /// Copy-in mode (PostgreSQL's CopyGetData): data, end or failure; Sync and Flush are
    /// ignored; anything else aborts the COPY.
    fn copy_in(&mut self, by_query: bool, t: u8, out: &mut Vec<u8>) {
        match t {
            b'S' => self.copy_synced = true,
            b'd' | b'H' => {}
            b'c' => {
                self.copy = None;
                self.copy_synced = false;
                build::command_complete(out, "COPY 1");
                if by_query {
                    build::ready_for_query(out, self.status);
                }
            }
            // CopyFail, or any other message, which PostgreSQL reads and drops with its error.
            _ => {
                self.copy = None;
                self.copy_sync_unknown |= std::mem::take(&mut self.copy_synced);
                // Dropped: pgring ends such a client (08P01) when it sees the CopyInResponse,
                // which this toy answered before pgring read on; what it answers after that
                // is not checked.
                if t != b'f' {
                    self.tainted = true;
                }
                let code = if t == b'f' { "57014" } else { "08P01" };
                build::error_response(out, build::Severity::Error, code, "sim copy");
                self.fail();
                if by_query {
                    build::ready_for_query(out, self.status);
                } else {
                    self.skipping = true;
                }
            }
        }
    }

    fn answer(&mut self, t: u8, body: &[u8], out: &mut Vec<u8>) {
        if let Some(by_query) = self.copy {
            return self.copy_in(by_query, t, out);
        }
        let first = body.split(|&b| b == 0).next().unwrap_or_default().to_vec();
        if self.skipping && t != b'S' {
            return;
        }
        self.unsynced = match t {
            b'P' | b'B' | b'D' | b'C' | b'E' => true,
            b'S' | b'Q' | b'F' => false,
            _ => self.unsynced,
        };
        // In a failed transaction block everything but its end fails (and a Query still gets
        // its ReadyForQuery).
        let ends_block = body.starts_with(b"COMMIT") || body.starts_with(b"ROLLBACK");
        if self.status == b'E' && matches!(t, b'P' | b'B' | b'E' | b'Q') && !ends_block {
            if t == b'Q' {
                build::error_response(out, build::Severity::Error, "25P02", "sim");
                build::ready_for_query(out, self.status);
            } else {
                self.error("25P02", out);
            }
            return;
        }
        match t {
            b'P' if !first.is_empty() && self.names.contains(&first) => {
                self.check_own_name(&first, "42P05");
                self.error("42P05", out)
            }
            b'P' => {
                let text = body.split(|&b| b == 0).nth(1).unwrap_or_default().to_vec();
                self.texts.insert(first.clone(), text);
                if !first.is_empty() {
                    self.names.insert(first);
                }
                build::empty_message(out, b'1');
            }
            b'B' => {
                let stmt = body.split(|&b| b == 0).nth(1).unwrap_or_default();
                if !stmt.is_empty() && !self.names.contains(stmt) {
                    self.check_own_name(stmt, "26000");
                    self.error("26000", out);
                } else {
                    self.portal_copy = self.texts.get(stmt).is_some_and(|t| t.starts_with(b"COPY"));
                    build::empty_message(out, b'2');
                }
            }
            b'D' | b'C' if body.first() == Some(&b'S') && body.len() > 2 => {
                let name = body[1..body.len() - 1].to_vec();
                if t == b'C' {
                    self.names.remove(&name);
                    build::empty_message(out, b'3');
                } else if self.names.contains(&name) {
                    out.extend(msg(b't', b"\0\0"));
                    build::empty_message(out, b'n');
                } else {
                    self.check_own_name(&name, "26000");
                    self.error("26000", out);
                }
            }
            b'D' => build::empty_message(out, b'n'),
            b'C' => build::empty_message(out, b'3'),
            b'E' if self.portal_copy => {
                self.portal_copy = false;
                self.copy = Some(false);
                out.extend(msg(b'G', b"\0\0\0"));
            }
            b'E' => build::command_complete(out, "SELECT 1"),
            b'S' | b'Q' | b'F' => {
                if t == b'Q' && body.starts_with(b"DEALLOCATE ALL") {
                    self.names.clear();
                    build::command_complete(out, "DEALLOCATE ALL");
                } else if t == b'Q' && body.starts_with(b"DISCARD ALL") && self.status == b'T' {
                    build::error_response(out, build::Severity::Error, "25001", "sim");
                    self.fail();
                } else if t == b'Q' && body.starts_with(b"DISCARD ALL") {
                    self.names.clear();
                    build::command_complete(out, "DISCARD ALL");
                } else if t == b'Q' && body.starts_with(b"COPY") {
                    self.copy = Some(true);
                    out.extend(msg(b'G', b"\0\0\0"));
                    return;
                } else if t == b'Q' && body.starts_with(b"SELECT 1/0") {
                    build::error_response(out, build::Severity::Error, "22012", "sim");
                    self.fail();
                } else if t == b'Q' {
                    self.status = match &body[..body.len().min(5)] {
                        b"BEGIN" => b'T',
                        b"COMMI" | b"ROLLB" => b'I',
                        _ => self.status,
                    };
                    build::command_complete(out, "SELECT 1");
                }
                self.skipping = false;
                build::ready_for_query(out, self.status);
            }
            b'H' | b'd' | b'c' | b'f' => {}
            _ => self.error("08P01", out),
        }
    }
}
