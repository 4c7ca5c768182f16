//! Login: from the first packet to the first ReadyForQuery, in three phases. The first
//! packets (TLS, cancel, StartupMessage) are `startup`'s; proving who the client is, by the
//! configured method, is `authenticate`'s; this file takes the client's slots and pool, checks
//! its parameters, and greets it with the pool's server parameters overlaid with its own, a
//! cancel key that pgring owns, and ReadyForQuery (or serves the admin console). The whole
//! phase runs under `client_login_timeout`.

use std::rc::Rc;
use std::sync::Arc;

use tracing::info;

use super::authenticate::{auth_method, authenticate};
use super::startup::{check_tls_required, read_startup, Startup};
use super::{ClientInfo, ClientState};
use crate::config::Config;
use crate::error::{sqlstate, Error, PgError, Result};
use crate::pool::{Counter, Pool, PoolKey};
use crate::protocol::build;
use crate::runtime::io::{self as rio, timeout};
use crate::runtime::shard::counter;
use crate::runtime::{Shard, Stream};
use crate::server::ClientParams;

/// Names under which the admin console is reachable.
pub const ADMIN_DBS: [&str; 2] = ["pgbouncer", "pgring"];

/// Parameters PostgreSQL reports that pgring keeps in step per client.
const TRACKED: [&str; 6] = [
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
    "IntervalStyle",
];

/// A logged-in client.
pub enum LoggedIn {
    /// The admin console.
    Admin {
        /// admin_users member (else stats_users: SHOW only).
        is_admin: bool,
    },
    /// A normal pool.
    Pool {
        /// This shard's slice of the pool.
        pool: Rc<Pool>,
        /// What the client's servers must look like.
        params: ClientParams,
        /// Its places under max_db/user_client_connections.
        slots: ClientSlots,
    },
}

/// A client's places under `max_db_client_connections` and
/// `max_user_client_connections` (in that order), returned when the session
/// ends.
pub struct ClientSlots([Arc<Counter>; 2]);

impl Drop for ClientSlots {
    fn drop(&mut self) {
        for c in &self.0 {
            c.give();
        }
    }
}

/// Takes the client's places, or refuses it with PgBouncer's wording
/// (client.c: "client connections exceeded (max_db_client_connections)").
fn take_client_slots(shard: &Shard, config: &Config, db: &str, user: &str) -> Result<ClientSlots> {
    let shared = &shard.shared;
    let db_slot = take_slot(
        counter(&shared.db_clients, db),
        config.max_db_client_connections(db),
        "max_db_client_connections",
    )?;
    let user_slot = take_slot(
        counter(&shared.user_clients, user),
        config.max_user_client_connections(user),
        "max_user_client_connections",
    );
    match user_slot {
        Ok(user_slot) => Ok(ClientSlots([db_slot, user_slot])),
        Err(e) => {
            db_slot.give();
            Err(e)
        }
    }
}

fn take_slot(c: Arc<Counter>, limit: u32, what: &str) -> Result<Arc<Counter>> {
    if c.try_take(limit) {
        Ok(c)
    } else {
        Err(Error::refuse(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!("client connections exceeded ({what})"),
        ))
    }
}

/// Runs the login phase. `Ok(None)`: nothing more to do (cancel request).
pub async fn login(
    shard: &Rc<Shard>,
    info: &Rc<ClientInfo>,
    stream: &mut Stream,
) -> Result<Option<LoggedIn>> {
    let config = shard.config();
    let limit = config.general.client_login_timeout.duration();
    // Room for AuthenticationOk and a typical greeting (~450 bytes), so neither grows it.
    let mut unsent = Vec::with_capacity(512);
    // The work is boxed: its ~3 KB state would otherwise be copied into
    // the timeout's combinators several times over (~10 KB per client
    // logging in, and 10,000 clients connecting at once leave the heap
    // that much larger for good).
    let work = Box::pin(login_inner(shard, info, stream, &config, &mut unsent));
    let result = if limit.is_zero() {
        work.await
    } else {
        timeout(limit, work).await.unwrap_or_else(|| {
            Err(Error::refuse(
                sqlstate::PROTOCOL_VIOLATION,
                "client_login_timeout",
            ))
        })
    };
    if result.is_err() && !unsent.is_empty() {
        // The client was authenticated but not greeted: it hears its AuthenticationOk
        // before the error, as it did when that was sent on its own.
        let _ = rio::write_all(stream, &unsent).await;
    }
    result
}

/// `unsent` holds what is owed to the client but not yet written: AuthenticationOk waits
/// there to go out in one write with the greeting (as PgBouncer's `welcome_client` sends
/// them), which saves a `send` per login; `login` flushes it if the login fails instead.
async fn login_inner(
    shard: &Rc<Shard>,
    info: &Rc<ClientInfo>,
    stream: &mut Stream,
    config: &Config,
    unsent: &mut Vec<u8>,
) -> Result<Option<LoggedIn>> {
    let Some(mut startup) = read_startup(shard, stream).await? else {
        return Ok(None);
    };
    if config.general.application_name_add_host {
        add_host_to_app_name(&mut startup.params, stream);
    }
    *info.user.borrow_mut() = startup.user.as_str().into();
    *info.db.borrow_mut() = startup.database.as_str().into();
    if let Some((_, app)) = startup.params.iter().find(|(k, _)| k == "application_name") {
        *info.app_name.borrow_mut() = app.as_str().into();
    }
    check_tls_required(stream, config)?;
    crate::admin::check_login_allowed(shard, &startup.database)?;
    if ADMIN_DBS.contains(&startup.database.as_str()) {
        return admin_login(shard, info, stream, config, &startup, unsent)
            .await
            .map(Some);
    }
    let Some(db) = config.database(&startup.database) else {
        return Err(Error::refuse(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{}\" does not exist", startup.database),
        ));
    };
    let method = auth_method(shard, stream, config, &startup.database, &startup.user)?;
    let db_name = Some(startup.database.as_str());
    let keys = authenticate(shard, stream, method, &startup.user, db_name, unsent).await?;
    let slots = take_client_slots(shard, config, &startup.database, &startup.user)?;
    let key = pool_key(info, db.user.as_deref());
    if let Some(keys) = keys.filter(|_| *key.user == *startup.user) {
        super::auth_query::remember_keys(shard, &key, keys);
    }
    let pool = shard.pool(&key);
    share_names(info, &pool.key);
    let params = prepare_params(shard, info, stream, &pool, config, &startup).await?;
    share_app_name(info, &pool);
    greet(stream, info, &pool, &params, unsent).await?;
    pool.stats.record_login();
    // PgBouncer 1.18's `log_connections` wording (client.c), which operators grep for.
    let tls = remember_tls(shard, info, stream);
    if crate::logs::connections() {
        info!(db = %startup.database, user = %startup.user, %tls, "login attempt: db={} user={} tls={tls}", startup.database, startup.user);
    }
    Ok(Some(LoggedIn::Pool {
        pool,
        params,
        slots,
    }))
}

/// The pool the client logs in to: its database, as the server user the entry forces or as
/// itself. Built from the client's own shared names, so it costs no copy of them.
fn pool_key(info: &ClientInfo, forced_user: Option<&str>) -> PoolKey {
    PoolKey {
        db: info.db.borrow().clone(),
        user: match forced_user {
            Some(user) => user.into(),
            None => info.user.borrow().clone(),
        },
    }
}

/// `application_name_add_host`: the client's address after its application_name, as PgBouncer
/// writes it (`set_appname`: `psql - 10.0.0.7:52114`, `app - ...` when the client sent none,
/// `unix(PID)` on the unix socket), so that a query seen in pg_stat_activity leads back to the
/// client behind the pooler.
fn add_host_to_app_name(params: &mut Vec<(String, String)>, stream: &Stream) {
    let details = match rio::peer_addr(stream) {
        Some(a) => format!("{}:{}", a.ip(), a.port()),
        None => stream
            .peer_pid()
            .map_or_else(|| "unix".to_owned(), |pid| format!("unix({pid})")),
    };
    match params.iter_mut().find(|(k, _)| k == "application_name") {
        Some((_, app)) => *app = format!("{app} - {details}"),
        None => params.push(("application_name".into(), format!("app - {details}"))),
    }
}

/// Points the client's db and user at its pool key's strings where they are
/// the same, so that the pool's clients hold one copy between them.
fn share_names(info: &ClientInfo, key: &PoolKey) {
    for (mine, shared) in [(&info.db, &key.db), (&info.user, &key.user)] {
        let mut mine = mine.borrow_mut();
        if *mine == *shared {
            *mine = shared.clone();
        }
    }
}

/// The client's application_name, as the pool's shared copy (the one its
/// parameters hold too).
fn share_app_name(info: &ClientInfo, pool: &Pool) {
    let mut app = info.app_name.borrow_mut();
    if !app.is_empty() {
        *app = pool.intern(&app);
    }
}

/// Notes a TLS client's version and cipher for SHOW CLIENTS; returns it for the login line
/// (`no` without TLS, as PgBouncer logs it).
fn remember_tls(shard: &Shard, info: &ClientInfo, stream: &Stream) -> String {
    let Some(tls) = stream.tls_info() else {
        return "no".into();
    };
    let shown = tls.as_str().into();
    shard.tls_clients.borrow_mut().insert(info.key, shown);
    tls
}

/// The parameters a client's server must match: PgBouncer's tracked ones and
/// `track_extra_parameters`.
pub(super) fn tracked(config: &Config) -> impl Iterator<Item = &str> + Clone + '_ {
    let extra = config.general.track_extra_parameters.iter();
    TRACKED.iter().copied().chain(extra.map(String::as_str))
}

/// Builds the client's wanted parameters and, when they differ from what this pool's servers
/// were already seen to accept (on any shard), tries them on a server so a value PostgreSQL
/// rejects fails the login as it would without us, at every login that asks for it.
async fn prepare_params(
    shard: &Rc<Shard>,
    info: &ClientInfo,
    stream: &Stream,
    pool: &Rc<Pool>,
    config: &Config,
    startup: &Startup,
) -> Result<ClientParams> {
    let ignored = &config.general.ignore_startup_parameters;
    let requested = || {
        let params = startup.params.iter();
        params.filter(|(k, _)| !ignored.iter().any(|i| i.eq_ignore_ascii_case(k)))
    };
    // The first client of this pool (on any shard) learns from a server what to greet clients
    // with; that server then serves the parameter check too, if there is one.
    let mut server = match pool.welcome() {
        Some(_) => None,
        None => Some(lease_at_login(pool, shard, Some(info), stream).await?),
    };
    let mut params = ClientParams::new(pool.client_base(tracked(config)));
    let mut novel = false;
    for (k, v) in requested() {
        params.set_with(k, v, |s| pool.intern(s));
        novel |= needs_check(k) && !pool.is_accepted(k, v);
    }
    if novel {
        let mut held = match server.take() {
            Some(held) => held,
            None => lease_at_login(pool, shard, Some(info), stream).await?,
        };
        let result = held.sync_params(&mut params).await;
        match &result {
            Ok(()) => {
                let checked = requested().filter(|(k, _)| needs_check(k));
                pool.accepted(checked.map(|(k, v)| (k.as_str(), v.as_str())));
                pool.release(shard, held.take());
            }
            Err(Error::Server(_)) => pool.release(shard, held.take()),
            Err(_) => pool.close_leased(shard, held.take(), "parameter check failed"),
        }
        result.map_err(Error::into_fatal)?;
    }
    if let Some(held) = server {
        pool.release(shard, held.take());
    }
    Ok(params)
}

/// Whether a startup parameter's value must be tried on a server before the client is let in:
/// all but application_name, which PostgreSQL takes whatever it is (and which
/// `application_name_add_host`, or an application naming each connection, makes new at nearly
/// every login).
fn needs_check(name: &str) -> bool {
    !name.eq_ignore_ascii_case("application_name")
}

/// Leases a server for a login's own use (the welcome, a parameter check, an auth_query). A
/// client that must wait for it waits as PgBouncer's `CL_WAITING_LOGIN` clients do: counted in
/// its pool's `cl_waiting` and shown `waiting` in SHOW CLIENTS (when `info` is given), and
/// watched, so that one that hangs up leaves the queue at once. It has sent nothing it may
/// send before its login ends; if it sends something anyway, that stays in the socket for the
/// session and the watch ends (the wait goes on). Under PAUSE (or SUSPEND) of the pool's
/// database it waits for RESUME first, as PgBouncer serves no waiting client then: a login
/// must not open a server while the operator has the database's connections closed (a
/// restart, a migration that needs none).
pub(super) async fn lease_at_login<'a>(
    pool: &'a Rc<Pool>,
    shard: &'a Rc<Shard>,
    info: Option<&ClientInfo>,
    stream: &Stream,
) -> Result<crate::pool::Held<'a>> {
    let mut acquire = std::pin::pin!(async {
        while crate::admin::is_paused(shard, pool) {
            shard.state_changed.notified().await;
        }
        pool.acquire(shard, crate::pool::INTERNAL).await
    });
    if let Some(done) = futures_lite::future::poll_once(acquire.as_mut()).await {
        return done;
    }
    if let Some(info) = info {
        info.state.set(ClientState::Waiting);
        info.request_time.set(rio::now());
    }
    let hung_up = |cx: &mut std::task::Context<'_>| {
        let gone = stream.poll_hangup(cx);
        gone.map(|gone| gone.then_some(Error::ClientClosed))
    };
    let done = super::watch::until_or(acquire, hung_up).await;
    if let Some(info) = info {
        info.state.set(ClientState::Login);
    }
    done.and_then(|leased| leased)
}

/// Greets the client: ParameterStatus, BackendKeyData, ReadyForQuery, after the
/// AuthenticationOk already in `unsent`, all in one write.
async fn greet(
    stream: &mut Stream,
    info: &ClientInfo,
    pool: &Pool,
    params: &ClientParams,
    unsent: &mut Vec<u8>,
) -> Result<()> {
    // Taken: once the write is tried, nothing is owed (a failed write ends the client).
    let mut out = std::mem::take(unsent);
    // The pool's defaults are the welcome's own values (its tracked part, shared), so only
    // the client's overrides need looking up.
    for (name, value) in pool.welcome().unwrap_or_default().iter() {
        let value = params.overridden(name).unwrap_or(value);
        build::parameter_status(&mut out, name, value);
    }
    build::backend_key_data(&mut out, info.key);
    build::ready_for_query(&mut out, b'I');
    rio::write_all(stream, &out).await.map_err(Error::ClientIo)
}

/// The admin console: same authentication, then admin_users/stats_users.
async fn admin_login(
    shard: &Rc<Shard>,
    info: &Rc<ClientInfo>,
    stream: &mut Stream,
    config: &Config,
    startup: &Startup,
    unsent: &mut Vec<u8>,
) -> Result<LoggedIn> {
    let user = &startup.user;
    let own_user = is_own_user(stream, user);
    if own_user {
        build::auth_ok(unsent);
    } else {
        let method = auth_method(shard, stream, config, &startup.database, user)?;
        authenticate(shard, stream, method, user, None, unsent).await?;
    }
    let is_admin = own_user || config.general.admin_users.iter().any(|u| u == user);
    let is_stats = config.general.stats_users.iter().any(|u| u == user);
    if !is_admin && !is_stats {
        return Err(Error::Refused(PgError::fatal(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("not allowed: user \"{user}\" is not in admin_users or stats_users"),
        )));
    }
    info.is_admin.set(true);
    remember_tls(shard, info, stream);
    let mut out = std::mem::take(unsent);
    for (k, v) in [
        ("server_version", crate::admin::SERVER_VERSION),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
        ("application_name", "pgring"),
    ] {
        build::parameter_status(&mut out, k, v);
    }
    build::backend_key_data(&mut out, info.key);
    build::ready_for_query(&mut out, b'I');
    rio::write_all(stream, &out)
        .await
        .map_err(Error::ClientIo)?;
    Ok(LoggedIn::Admin { is_admin })
}

/// PgBouncer's `admin_pre_login`: user `pgbouncer` on the unix socket, whose peer (SO_PEERCRED)
/// runs as pgring's own uid, is the operator (health checks, exporters): a full admin with no
/// password. Over TCP the peer cannot be known, so it never applies there.
fn is_own_user(stream: &Stream, user: &str) -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::getuid() };
    user == "pgbouncer" && stream.peer_uid() == Some(own_uid)
}
