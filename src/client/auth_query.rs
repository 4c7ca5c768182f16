//! `auth_query`: secrets of users missing from the auth file, looked up in PostgreSQL, and
//! the SCRAM pass-through keys that let pgring log in as a user it holds only a verifier for.
//!
//! As in PgBouncer, when a client's user is not in `auth_file` and `auth_user` is set (on the
//! database entry or in `[general]`), the entry's `auth_query` (default: PgBouncer's, reading
//! `pg_authid`) runs with the user name bound as the `$1` parameter of an extended-protocol
//! query, never spliced into the text. It runs on a server of the pool (`auth_dbname`, or the
//! client's database; `auth_user`), whose own password comes from the auth file as for any
//! pool. The secret returned (an `md5…` hash or a `SCRAM-SHA-256$…` verifier) is then used
//! exactly like an auth-file secret; no row, or a NULL secret (an expired `VALID UNTIL`),
//! means no such user, which the client sees as a wrong password.
//!
//! SCRAM pass-through (PgBouncer's `scram_client_key`): when a client proved itself against a
//! verifier, the ClientKey recovered from its proof plus the verifier's ServerKey are what
//! PostgreSQL's own SCRAM exchange asks for, so the pool of that user logs in with them when
//! no password is known.
//!
//! Both live in the shard's [`AuthCache`]: plain `RefCell` maps touched at login and when a
//! pool resolves its server credentials, never per transaction, so no lock. A looked-up
//! secret is trusted for [`TTL`] and until the next RELOAD, then asked for again at the next
//! login; until then the last one still serves server logins, so a RELOAD does not leave a
//! pool unable to open servers. Negative answers are not cached: a role created a moment ago
//! can log in at once.
//!
//! Not here: the password exchanges (`login`, [`crate::auth`]) and server login
//! ([`crate::server`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::auth::scram::PassThroughKeys;
use crate::auth::userlist::Secret;
use crate::config::Config;
use crate::error::{sqlstate, Error, PgError, Result};
use crate::pool::PoolKey;
use crate::protocol::backend::{self, ErrorFields};
use crate::protocol::{build, tag, ProtocolError};
use crate::runtime::io as rio;
use crate::runtime::{Shard, Stream};
use crate::server::ServerConn;
use crate::wire::{read_message, small_buf, ReadError};

/// How long a looked-up secret is trusted before the next login asks PostgreSQL again.
pub const TTL: Duration = Duration::from_secs(60);

/// A secret from `auth_query` and when it was fetched.
struct Entry {
    secret: Secret,
    fetched: Instant,
    generation: u64,
}

/// One shard's looked-up secrets and pass-through keys, by (database entry, user).
#[derive(Default)]
pub struct AuthCache {
    secrets: RefCell<HashMap<PoolKey, Entry>>,
    keys: RefCell<HashMap<PoolKey, PassThroughKeys>>,
    /// Bumped by RELOAD: older entries are asked for again at the next login.
    generation: Cell<u64>,
}

impl AuthCache {
    /// RELOAD: every looked-up secret is re-queried at its user's next login.
    pub fn expire(&self) {
        self.generation.set(self.generation.get() + 1);
    }

    /// The secret for `key` if it is still fresh.
    fn fresh(&self, key: &PoolKey) -> Option<Secret> {
        let map = self.secrets.borrow();
        let e = map.get(key)?;
        let fresh = e.generation == self.generation.get() && e.fetched.elapsed() < TTL;
        fresh.then(|| e.secret.clone())
    }

    /// Records a lookup's answer; a changed secret voids the keys learnt from the old one.
    fn store(&self, key: PoolKey, secret: Option<Secret>) {
        let mut map = self.secrets.borrow_mut();
        let changed = map.get(&key).map(|e| &e.secret) != secret.as_ref();
        if changed {
            self.keys.borrow_mut().remove(&key);
        }
        match secret {
            Some(secret) => {
                let entry = Entry {
                    secret,
                    fetched: Instant::now(),
                    generation: self.generation.get(),
                };
                map.insert(key, entry);
            }
            None => {
                map.remove(&key);
            }
        }
    }

    /// The last secret looked up for `key`, however old (server logins).
    pub fn server_secret(&self, key: &PoolKey) -> Option<Secret> {
        self.secrets.borrow().get(key).map(|e| e.secret.clone())
    }

    /// The pass-through keys learnt for `key`'s pool, if any.
    pub fn keys(&self, key: &PoolKey) -> Option<PassThroughKeys> {
        self.keys.borrow().get(key).cloned()
    }
}

/// What a session moving here from another shard (`balance`) knew of its pool's server
/// credentials: an `auth_query` secret and SCRAM pass-through keys, both learnt at client
/// logins, per shard. Without them this shard's slice of the pool could not open a server of
/// its own. Kept only where this shard knows nothing yet; the secret counts as stale for
/// client logins here, which look it up again.
pub fn adopt(
    shard: &Rc<Shard>,
    key: &PoolKey,
    secret: Option<Secret>,
    keys: Option<PassThroughKeys>,
) {
    let cache = &shard.auth_cache;
    let mut learnt = false;
    if let Some(secret) = secret {
        let mut secrets = cache.secrets.borrow_mut();
        if !secrets.contains_key(key) {
            let entry = Entry {
                secret,
                fetched: Instant::now(),
                generation: cache.generation.get().wrapping_sub(1),
            };
            secrets.insert(key.clone(), entry);
            learnt = true;
        }
    }
    if let Some(keys) = keys {
        if cache.keys(key).is_none() {
            cache.keys.borrow_mut().insert(key.clone(), keys);
            learnt = true;
        }
    }
    if learnt {
        reconfigure_pool(shard, key);
    }
}

/// A pool slice that already exists on this shard re-resolves its server credentials.
fn reconfigure_pool(shard: &Rc<Shard>, key: &PoolKey) {
    let pool = shard.pools.borrow().get(key).cloned();
    if let Some(pool) = pool {
        pool.reconfigure(shard);
    }
}

/// Remembers the pass-through keys of a client's SCRAM login for its pool; a pool that
/// already exists re-resolves its server credentials when they are new.
pub fn remember_keys(shard: &Rc<Shard>, key: &PoolKey, keys: PassThroughKeys) {
    let old = shard.auth_cache.keys.borrow_mut().insert(key.clone(), keys);
    if old.as_ref() != Some(&keys) {
        reconfigure_pool(shard, key);
    }
}

/// The secret of `user` for database entry `db` from `auth_query`, when the entry (or
/// `[general]`) names an `auth_user`. `Ok(None)`: no such user, or no `auth_user`. The
/// client on `stream` is watched while it waits for a server of the auth pool.
pub async fn lookup(
    shard: &Rc<Shard>,
    stream: &Stream,
    config: &Config,
    db: &str,
    user: &str,
) -> Result<Option<Secret>> {
    let Some(entry) = config.database(db) else {
        return Ok(None);
    };
    let g = &config.general;
    let Some(auth_user) = entry.auth_user.as_deref().or(g.auth_user.as_deref()) else {
        return Ok(None);
    };
    let key = PoolKey {
        db: db.into(),
        user: user.into(),
    };
    if let Some(secret) = shard.auth_cache.fresh(&key) {
        return Ok(Some(secret));
    }
    let sql = entry.auth_query.as_deref().unwrap_or(&g.auth_query);
    let auth_db = entry.auth_dbname.as_deref().or(g.auth_dbname.as_deref());
    let auth_key = PoolKey {
        db: auth_db.unwrap_or(db).into(),
        user: auth_user.into(),
    };
    let secret = run_on_pool(shard, stream, &auth_key, sql, user).await?;
    debug!(user, auth_user, found = secret.is_some(), "auth_query");
    shard.auth_cache.store(key, secret.clone());
    Ok(secret)
}

/// Leases a server of `auth_key`'s pool, runs the query, gives the server back.
async fn run_on_pool(
    shard: &Rc<Shard>,
    stream: &Stream,
    auth_key: &PoolKey,
    sql: &str,
    user: &str,
) -> Result<Option<Secret>> {
    let pool = shard.pool(auth_key);
    let mut server = super::login::lease_at_login(&pool, shard, None, stream).await?;
    let result = query_secret(&mut server, sql, user).await;
    match &result {
        Ok(_) | Err(Error::Server(_)) => pool.release(shard, server.take()),
        Err(_) => pool.close_leased(shard, server.take(), "auth_query failed"),
    }
    if let Err(e) = &result {
        warn!(user, auth_user = %auth_key.user, error = %e, "auth_query failed");
    }
    result.map_err(Error::into_fatal)
}

/// Runs `sql` with `user` as `$1` (Parse, Bind, Execute, Sync) and reads the second column
/// of the first row. Empty secrets count as none: PostgreSQL stores no empty password.
async fn query_secret(server: &mut ServerConn, sql: &str, user: &str) -> Result<Option<Secret>> {
    let mut out = Vec::with_capacity(sql.len() + user.len() + 64);
    build::parse(&mut out, "", sql.as_bytes(), &0u16.to_be_bytes());
    bind_one_text_param(&mut out, user.as_bytes());
    execute_all(&mut out);
    build::sync(&mut out);
    rio::write_all(&mut server.stream, &out)
        .await
        .map_err(Error::ServerIo)?;
    let text = read_reply(server).await?;
    Ok(text.filter(|t| !t.is_empty()).map(|t| Secret::parse(&t)))
}

/// Bind of the unnamed statement to the unnamed portal with one text parameter.
fn bind_one_text_param(out: &mut Vec<u8>, value: &[u8]) {
    // formats count, parameter count, its length and bytes, result formats count.
    let tail_len = 2 + 2 + 4 + value.len() + 2;
    build::bind_head(out, b"", b"", tail_len);
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// Execute of the unnamed portal, all rows.
fn execute_all(out: &mut Vec<u8>) {
    out.push(tag::EXECUTE);
    out.extend_from_slice(&9u32.to_be_bytes());
    out.push(0);
    out.extend_from_slice(&0u32.to_be_bytes());
}

/// Reads up to ReadyForQuery; the second column of the first DataRow.
async fn read_reply(server: &mut ServerConn) -> Result<Option<String>> {
    let mut buf = small_buf();
    let mut first: Option<Option<String>> = None;
    let mut failure = None;
    loop {
        let msg = read_message(&mut server.stream, &mut buf, u32::MAX >> 1)
            .await
            .map_err(|e| match e {
                ReadError::Io(e) => Error::ServerIo(e),
                ReadError::Eof => Error::ServerIo(std::io::ErrorKind::UnexpectedEof.into()),
                ReadError::Protocol(p) => Error::ServerProtocol(p),
            })?;
        match msg.tag {
            tag::DATA_ROW if first.is_none() => {
                first = Some(second_column(&msg.body).map_err(Error::ServerProtocol)?);
            }
            tag::ERROR_RESPONSE => {
                failure = Some(ErrorFields::parse(&msg.body).map_err(Error::ServerProtocol)?);
            }
            tag::PARAMETER_STATUS => {
                let (k, v) = backend::parameter_status(&msg.body).map_err(Error::ServerProtocol)?;
                server.meta.params.on_status(k, v);
            }
            tag::READY_FOR_QUERY => {
                let status = backend::ready_status(&msg.body).map_err(Error::ServerProtocol)?;
                return match (failure, status) {
                    (Some(e), _) => Err(Error::Server(PgError::from(e))),
                    (None, b'I') => Ok(first.flatten()),
                    (None, _) => Err(Error::Server(PgError::error(
                        sqlstate::PROTOCOL_VIOLATION,
                        "server left in a transaction by auth_query",
                    ))),
                };
            }
            _ => {}
        }
    }
}

/// The second column of a DataRow as text (`None`: SQL NULL).
fn second_column(body: &[u8]) -> std::result::Result<Option<String>, ProtocolError> {
    let bad = ProtocolError::Malformed { what: "DataRow" };
    let count = body.get(..2).ok_or(bad.clone())?;
    if u16::from_be_bytes([count[0], count[1]]) < 2 {
        return Err(bad);
    }
    let mut at = 2;
    let mut value = None;
    for _ in 0..2 {
        let len = crate::protocol::read_i32(body, at).ok_or(bad.clone())?;
        at += 4;
        if len < 0 {
            value = None;
            continue;
        }
        let end = at.checked_add(len as usize).ok_or(bad.clone())?;
        let bytes = body.get(at..end).ok_or(bad.clone())?;
        value = Some(String::from_utf8(bytes.to_vec()).map_err(|_| bad.clone())?);
        at = end;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[Option<&str>]) -> Vec<u8> {
        let mut out = Vec::new();
        build::data_row(&mut out, cols);
        out[5..].to_vec()
    }

    #[test]
    fn second_column_reads_text_and_null() {
        let secret = row(&[Some("u"), Some("md5abc")]);
        assert_eq!(second_column(&secret).unwrap().as_deref(), Some("md5abc"));
        assert_eq!(second_column(&row(&[Some("u"), None])).unwrap(), None);
    }

    #[test]
    fn second_column_rejects_short_rows() {
        assert!(second_column(&row(&[Some("u")])).is_err());
        let mut truncated = row(&[Some("u"), Some("md5abc")]);
        truncated.truncate(truncated.len() - 1);
        assert!(second_column(&truncated).is_err());
        assert!(second_column(&[]).is_err());
    }

    #[test]
    fn bind_message_length_matches_its_body() {
        let mut out = Vec::new();
        bind_one_text_param(&mut out, b"o'brien");
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
    }

    #[test]
    fn a_changed_secret_forgets_its_keys() {
        let cache = AuthCache::default();
        let key = PoolKey {
            db: "app".into(),
            user: "u".into(),
        };
        cache.store(
            key.clone(),
            Some(Secret::parse("md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")),
        );
        let keys = PassThroughKeys {
            client_key: [1; 32],
            server_key: [2; 32],
        };
        cache.keys.borrow_mut().insert(key.clone(), keys);
        cache.store(
            key.clone(),
            Some(Secret::parse("md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")),
        );
        assert!(cache.keys(&key).is_some());
        assert!(cache.fresh(&key).is_some());
        cache.expire();
        assert!(cache.fresh(&key).is_none());
        assert!(cache.server_secret(&key).is_some());
        cache.store(key.clone(), None);
        assert!(cache.keys(&key).is_none());
        assert!(cache.server_secret(&key).is_none());
    }
}
