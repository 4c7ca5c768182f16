//! The console session: simple-protocol queries answered by pgring, with
//! PgBouncer's grammar, permissions and error texts (src/admin.c).
//!
//! `stats_users` may run SHOW (and SELECT, its synonym); everything else
//! needs `admin_users` and is otherwise refused with "admin access needed".
//! Every error is an ERROR with SQLSTATE 08P01 followed by ReadyForQuery,
//! as PgBouncer sends them; the session goes on.

use std::rc::Rc;
use std::time::Duration;

use tracing::info;

use super::control::ShardCommand;
use super::gather::{self, control_all};
use super::parse::{parse, Statement};
use super::report::merge_pools;
use super::rows::{self, error};
use super::{reload, show_config, show_misc, show_pools, show_stats};
use crate::client::ClientInfo;
use crate::error::{sqlstate, Error, PgError, Result};
use crate::protocol::{build, frontend, tag};
use crate::runtime::io::write_all;
use crate::runtime::{self, Control, Shard, Stream};
use crate::wire::{read_message, small_buf, ReadError};

/// How often PAUSE and WAIT_CLOSE look again.
const POLL: Duration = Duration::from_millis(50);

/// Serves console queries until the client leaves.
pub async fn serve(
    shard: &Rc<Shard>,
    info: &Rc<ClientInfo>,
    stream: &mut Stream,
    is_admin: bool,
) -> Result<()> {
    let mut buf = small_buf();
    let mut console = Console {
        shard: shard.clone(),
        is_admin,
    };
    loop {
        let msg = match read_message(stream, &mut buf, 1 << 20).await {
            Ok(m) => m,
            Err(ReadError::Eof) => return Ok(()),
            Err(ReadError::Io(e)) => return Err(Error::ClientIo(e)),
            Err(ReadError::Protocol(p)) => return Err(Error::ClientProtocol(p)),
        };
        let mut out = Vec::new();
        match msg.tag {
            tag::TERMINATE => return Ok(()),
            tag::QUERY => {
                let sql = frontend::query_text(&msg.body).map_err(Error::ClientProtocol)?;
                info.request_time.set(std::time::Instant::now());
                if !console.answer(sql, &mut out).await {
                    // SHUTDOWN: like PgBouncer, no reply; the shutdown
                    // closes this connection.
                    continue;
                }
            }
            _ => PgError::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "admin console supports only simple queries",
            )
            .encode(&mut out),
        }
        build::ready_for_query(&mut out, b'I');
        write_all(stream, &out).await.map_err(Error::ClientIo)?;
    }
}

struct Console {
    shard: Rc<Shard>,
    is_admin: bool,
}

/// PgBouncer's answer to anything it cannot parse or does not know.
fn syntax_error(out: &mut Vec<u8>, sql: &str) {
    error(out, format!("invalid command '{sql}', use SHOW HELP;"));
}

impl Console {
    /// Answers one query into `out`; false means "send nothing" (SHUTDOWN).
    async fn answer(&mut self, sql: &str, out: &mut Vec<u8>) -> bool {
        match parse(sql) {
            None => syntax_error(out, sql),
            Some(Statement::Empty) => build::empty_query_response(out),
            Some(Statement::Set { key, value }) => self.set(&key, &value, out).await,
            Some(Statement::Command { cmd, arg }) => {
                return self.command(sql, &cmd, arg, out).await;
            }
        }
        true
    }

    async fn command(
        &mut self,
        sql: &str,
        cmd: &str,
        arg: Option<String>,
        out: &mut Vec<u8>,
    ) -> bool {
        if cmd == "show" || cmd == "select" {
            self.show(sql, arg.as_deref().unwrap_or(""), out).await;
            return true;
        }
        const CONTROL: [&str; 11] = [
            "pause",
            "resume",
            "suspend",
            "disable",
            "enable",
            "reconnect",
            "kill",
            "kill_client",
            "shutdown",
            "reload",
            "wait_close",
        ];
        if !CONTROL.contains(&cmd) {
            syntax_error(out, sql);
            return true;
        }
        if matches!(cmd, "suspend" | "reload") && arg.is_some() {
            syntax_error(out, sql);
            return true;
        }
        if !self.is_admin {
            error(out, "admin access needed");
            return true;
        }
        info!(command = sql, "admin command");
        match cmd {
            "shutdown" => return self.shutdown(sql, arg.as_deref(), out).await,
            "reload" => self.reload(out).await,
            "pause" => self.pause(arg, out).await,
            "resume" => self.resume(arg, out).await,
            "suspend" => self.suspend(out).await,
            "disable" | "enable" => self.disable(cmd, arg, out).await,
            "reconnect" => self.reconnect(arg, out).await,
            "kill" => self.kill(arg, out).await,
            "kill_client" => self.kill_client(arg, out).await,
            _ => self.wait_close(arg, out).await,
        }
        true
    }

    async fn show(&mut self, sql: &str, what: &str, out: &mut Vec<u8>) {
        if show_misc::fake_show(out, what) {
            return;
        }
        let shard = &self.shard;
        match what.to_ascii_lowercase().as_str() {
            "help" => show_misc::help(out),
            "version" => show_misc::version(out),
            "state" => show_misc::state(shard, out),
            "lists" => show_misc::lists(shard, out).await,
            "mem" => show_misc::mem(shard, out),
            "config" => show_config::config(shard, out),
            "databases" => show_config::databases(shard, out).await,
            "users" => show_config::users(shard, out).await,
            "pools" => show_pools::pools(shard, out).await,
            "clients" => show_pools::connections(shard, out, false).await,
            "servers" => show_pools::connections(shard, out, true).await,
            "stats" => show_stats::stats(shard, out).await,
            "stats_totals" => show_stats::stats_split(shard, out, false).await,
            "stats_averages" => show_stats::stats_split(shard, out, true).await,
            "totals" => show_stats::totals(shard, out).await,
            "latency" | "percentiles" => show_stats::latency(shard, out).await,
            "peers" => show_misc::peers(shard, out),
            "peer_pools" => show_misc::peer_pools(shard, out),
            "dns_hosts" => show_misc::dns_hosts(shard, out),
            "dns_zones" => show_misc::dns_zones(out),
            _ => syntax_error(out, sql),
        }
    }

    async fn set(&mut self, key: &str, value: &str, out: &mut Vec<u8>) {
        if show_misc::fake_set(out, key) {
            return;
        }
        if !self.is_admin {
            return error(out, "admin access needed");
        }
        match reload::set(&self.shard, key, value).await {
            Ok(notes) => {
                for n in notes {
                    rows::notice(out, &n, None);
                }
                build::command_complete(out, &format!("SET {key}={value}"));
            }
            Err(e) => error(out, format!("SET failed: {e}")),
        }
    }

    async fn reload(&mut self, out: &mut Vec<u8>) {
        match reload::reload_from_file(&self.shard).await {
            Ok(notes) => {
                for n in notes {
                    rows::notice(out, &n, None);
                }
                build::command_complete(out, "RELOAD");
            }
            Err(e) => PgError::error("F0000", format!("RELOAD failed: {e}")).encode(out),
        }
    }

    /// The database argument of a control command: it must exist and not
    /// be the console. `verb` goes into PgBouncer's "cannot ... admin db".
    fn target(&self, arg: &Option<String>, verb: &str, out: &mut Vec<u8>) -> Option<()> {
        let Some(db) = arg else { return Some(()) };
        if crate::client::login::ADMIN_DBS.contains(&db.as_str()) {
            error(out, format!("cannot {verb} admin db: {db}"));
            return None;
        }
        if !super::known_database(&self.shard, db) {
            error(out, format!("no such database: {db}"));
            return None;
        }
        Some(())
    }

    fn any_pause(&self) -> bool {
        self.shard.paused.get() || self.shard.admin.suspended()
    }

    async fn pause(&mut self, arg: Option<String>, out: &mut Vec<u8>) {
        if self.any_pause() {
            return error(out, "already suspended/paused");
        }
        if self.target(&arg, "pause", out).is_none() {
            return;
        }
        if let Err(e) = control_all(&self.shard, ShardCommand::Pause(arg.clone())).await {
            return error(out, e);
        }
        // PgBouncer answers PAUSE once no server of the paused pools is in
        // use; released ones are then closed.
        loop {
            match self.count(&arg, |p| p.sv_active).await {
                Ok(0) => break,
                Ok(_) => runtime::sleep(POLL).await,
                Err(e) => return error(out, e),
            }
        }
        let _ = control_all(&self.shard, ShardCommand::Pause(arg)).await;
        build::command_complete(out, "PAUSE");
    }

    /// Sums `f` over the merged pools of `db` (all but the console if None).
    async fn count(
        &self,
        db: &Option<String>,
        f: impl Fn(&super::report::PoolReport) -> u32,
    ) -> std::result::Result<u32, String> {
        let reports = gather::reports(&self.shard, false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(merge_pools(&reports)
            .iter()
            .filter(|p| p.db != super::ADMIN_DB)
            .filter(|p| db.as_deref().is_none_or(|d| d == p.db))
            .map(f)
            .sum())
    }

    async fn resume(&mut self, arg: Option<String>, out: &mut Vec<u8>) {
        match &arg {
            None if self.shard.is_stopping() => return error(out, "pooler is shutting down"),
            None if !self.any_pause() => return error(out, "pooler is not paused/suspended"),
            Some(db) if !super::known_database(&self.shard, db) => {
                return error(out, format!("no such database: {db}"))
            }
            Some(db) if !self.shard.admin.db_paused(db) => {
                return error(out, format!("database {db} is not paused"))
            }
            _ => {}
        }
        match control_all(&self.shard, ShardCommand::Resume(arg)).await {
            Ok(_) => build::command_complete(out, "RESUME"),
            Err(e) => error(out, e),
        }
    }

    async fn suspend(&mut self, out: &mut Vec<u8>) {
        if self.any_pause() {
            return error(out, "already suspended/paused");
        }
        if !self.shard.admin.paused_dbs.borrow().is_empty() {
            return error(out, "cannot suspend with paused databases");
        }
        match control_all(&self.shard, ShardCommand::Suspend).await {
            Ok(_) => build::command_complete(out, "SUSPEND"),
            Err(e) => error(out, e),
        }
    }

    async fn disable(&mut self, cmd: &str, arg: Option<String>, out: &mut Vec<u8>) {
        let Some(db) = arg.clone() else {
            return error(out, "a database is required");
        };
        if self.target(&arg, cmd, out).is_none() {
            return;
        }
        let (c, tag) = if cmd == "disable" {
            (ShardCommand::Disable(db), "DISABLE")
        } else {
            (ShardCommand::Enable(db), "ENABLE")
        };
        match control_all(&self.shard, c).await {
            Ok(_) => build::command_complete(out, tag),
            Err(e) => error(out, e),
        }
    }

    async fn reconnect(&mut self, arg: Option<String>, out: &mut Vec<u8>) {
        if self.target(&arg, "reconnect", out).is_none() {
            return;
        }
        match control_all(&self.shard, ShardCommand::Reconnect(arg)).await {
            Ok(_) => build::command_complete(out, "RECONNECT"),
            Err(e) => error(out, e),
        }
    }

    async fn kill(&mut self, arg: Option<String>, out: &mut Vec<u8>) {
        if self.any_pause() {
            return error(out, "already suspended/paused");
        }
        if self.target(&arg, "kill", out).is_none() {
            return;
        }
        match control_all(&self.shard, ShardCommand::Kill(arg)).await {
            Ok(_) => build::command_complete(out, "KILL"),
            Err(e) => error(out, e),
        }
    }

    async fn kill_client(&mut self, arg: Option<String>, out: &mut Vec<u8>) {
        let Some(id) = arg.and_then(|a| a.parse::<u64>().ok()) else {
            return error(out, "invalid client pointer supplied");
        };
        match control_all(&self.shard, ShardCommand::KillClient(id)).await {
            Ok(0) => error(out, "client not found"),
            Ok(_) => build::command_complete(out, "KILL_CLIENT"),
            Err(e) => error(out, e),
        }
    }

    async fn wait_close(&mut self, arg: Option<String>, out: &mut Vec<u8>) {
        if self.target(&arg, "wait in", out).is_none() {
            return;
        }
        loop {
            match self.count(&arg, |p| p.close_needed).await {
                Ok(0) => break,
                Ok(_) => runtime::sleep(POLL).await,
                Err(e) => return error(out, e),
            }
        }
        build::command_complete(out, "WAIT_CLOSE");
    }

    /// SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]. Immediate shutdown
    /// sends no reply (PgBouncer keeps the connection until it exits).
    async fn shutdown(&mut self, sql: &str, arg: Option<&str>, out: &mut Vec<u8>) -> bool {
        let control = match arg.map(str::to_ascii_uppercase).as_deref() {
            None => Control::ShutdownNow,
            Some("WAIT_FOR_CLIENTS") => Control::ShutdownWaitClients,
            Some("WAIT_FOR_SERVERS") => Control::ShutdownWaitServers,
            Some(_) => {
                syntax_error(out, sql);
                return true;
            }
        };
        if control == Control::ShutdownWaitServers {
            // PgBouncer pauses too, so running clients cannot keep servers busy.
            let _ = control_all(&self.shard, ShardCommand::Pause(None)).await;
        }
        self.shard.shared.post_control(control);
        if control == Control::ShutdownNow {
            return false;
        }
        build::command_complete(out, "SHUTDOWN");
        true
    }
}
