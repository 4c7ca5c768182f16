//! RELOAD and SET: a new configuration reaches every shard or none.
//!
//! The requester reads and validates the file once, then runs two phases
//! over the mesh: `Validate` (each shard checks the configuration against
//! its pools and parks it) and `Apply` (each shard switches, then the shared
//! copy is replaced) or `Abort` if any shard refused or did not answer.
//! Keys that only a restart can change (`RESTART_KEYS`: sockets, shards)
//! keep their running values and the caller is told so, as PgBouncer keeps
//! its `CF_NO_RELOAD` settings. Databases whose entry changed get a
//! RECONNECT, as PgBouncer tags them dirty on reload.
//!
//! SIGHUP reaches [`reload`] through `Control::Reload` on shard 0.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::{error, info, warn};

use super::control::ShardCommand;
use super::gather::{self, Answer, Op};
use crate::config::{Config, General, RESTART_KEYS};
use crate::runtime::files::load_files;
use crate::runtime::files::Files;
use crate::runtime::{self, Shard};
use crate::server::ConnectSettings;

/// One reload at a time, process-wide (a SIGHUP and a console RELOAD may
/// otherwise overwrite each other's parked configuration).
static RELOADING: AtomicBool = AtomicBool::new(false);

/// SIGHUP: reloads from the file pgring was started with, in a task.
pub fn reload(shard: Rc<Shard>) {
    runtime::spawn(async move {
        // Restart-only keys were already logged by `switch`.
        match reload_from_file(&shard).await {
            Ok(_) => {}
            Err(e) => error!(error = %e, "RELOAD failed; configuration unchanged"),
        }
    });
}

/// RELOAD: re-reads the configuration file and the files it names and switches
/// every shard. `Ok` carries notices (settings that need a restart).
pub async fn reload_from_file(shard: &Rc<Shard>) -> Result<Vec<String>, String> {
    let path = shard.shared.config_path.clone();
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    let files = load_files(&config)?;
    let notes = switch(shard, config, Arc::new(files)).await?;
    info!(path = %path.display(), "configuration reloaded");
    Ok(notes)
}

/// SET key = value: the running configuration with one `[general]` key
/// changed, switched like a RELOAD.
pub async fn set(shard: &Rc<Shard>, key: &str, value: &str) -> Result<Vec<String>, String> {
    if RESTART_KEYS.contains(&key) {
        return Err(format!("{key} cannot be changed without a restart"));
    }
    let old = shard.config();
    let mut table = toml::Table::try_from(&old.general).map_err(|e| e.to_string())?;
    if !table.contains_key(key) && !super::show_config::OPTIONAL_KEYS.contains(&key) {
        return Err(format!("unknown setting: {key}"));
    }
    table.insert(key.to_owned(), typed_value(table.get(key), value));
    let general: General = table.try_into().map_err(|e| format!("{key}: {e}"))?;
    let mut config = (*old).clone();
    config.general = general;
    config.validate().map_err(|e| e.to_string())?;
    // The files these keys name (or decide whether to read) are read again with them.
    let reads_files = ["client_tls", "server_tls", "auth_"]
        .iter()
        .any(|prefix| key.starts_with(prefix));
    let files = if reads_files {
        Arc::new(load_files(&config)?)
    } else {
        shard.files()
    };
    let notes = switch(shard, config, files).await?;
    info!(key, value, "SET");
    Ok(notes)
}

/// The TOML value for `raw`, shaped like the key's current value.
fn typed_value(current: Option<&toml::Value>, raw: &str) -> toml::Value {
    use toml::Value;
    match current {
        Some(Value::Boolean(_)) => match raw.to_ascii_lowercase().as_str() {
            "1" | "on" | "true" | "yes" => Value::Boolean(true),
            "0" | "off" | "false" | "no" => Value::Boolean(false),
            _ => Value::String(raw.to_owned()),
        },
        Some(Value::Integer(_) | Value::Float(_)) => raw
            .parse::<i64>()
            .map(Value::Integer)
            .or_else(|_| raw.parse::<f64>().map(Value::Float))
            .unwrap_or_else(|_| Value::String(raw.to_owned())),
        _ => Value::String(raw.to_owned()),
    }
}

/// The two phases. Fails, changing nothing, if any shard refuses.
pub async fn switch(
    shard: &Rc<Shard>,
    mut config: Config,
    files: Arc<Files>,
) -> Result<Vec<String>, String> {
    if RELOADING.swap(true, Ordering::AcqRel) {
        return Err("another RELOAD is in progress".into());
    }
    let old = shard.config();
    let notes = keep_restart_keys(&old, &mut config);
    // Logged before the switch, as PgBouncer warns while reading the file: whoever sees the
    // new settings live can already find these lines.
    for n in &notes {
        warn!("{n}");
    }
    let result = two_phase(shard, Arc::new(config), files).await;
    RELOADING.store(false, Ordering::Release);
    let config = result?;
    for db in changed_databases(&old, &config) {
        let _ = gather::control_all(shard, ShardCommand::Reconnect(Some(db))).await;
    }
    Ok(notes)
}

async fn two_phase(
    shard: &Rc<Shard>,
    config: Arc<Config>,
    files: Arc<Files>,
) -> Result<Arc<Config>, String> {
    let validated = gather::gather(shard, Op::Validate(config.clone(), files.clone())).await;
    let problems = match validated {
        Ok(answers) => refusals(answers),
        Err(e) => vec![e.to_string()],
    };
    if !problems.is_empty() {
        let _ = gather::gather(shard, Op::Abort).await;
        return Err(problems.join("; "));
    }
    let applied = gather::gather(shard, Op::Apply)
        .await
        .map_err(|e| e.to_string())?;
    let problems = refusals(applied);
    if !problems.is_empty() {
        // Only reachable if a shard lost its parked config: say so loudly.
        error!(?problems, "RELOAD applied on some shards only");
        return Err(problems.join("; "));
    }
    shard.shared.replace_config(config.clone(), files);
    Ok(config)
}

fn refusals(answers: Vec<Answer>) -> Vec<String> {
    let mut out: Vec<String> = answers
        .into_iter()
        .filter_map(|a| match a {
            Answer::Done(Err(e)) => Some(e),
            _ => None,
        })
        .collect();
    out.dedup();
    out
}

/// Phase 1 on one shard: the configuration must validate and resolve for
/// every pool this shard has; it is then parked until phase 2.
pub fn validate_on_shard(
    shard: &Rc<Shard>,
    config: Arc<Config>,
    files: Arc<Files>,
) -> Result<u32, String> {
    config.validate().map_err(|e| e.to_string())?;
    for key in shard.pools.borrow().keys() {
        if config.database(&key.db).is_none() {
            warn!(db = %key.db, "database removed by RELOAD; its clients keep their pool");
            continue;
        }
        // Names are looked up when connections open (dns_max_ttl), not here: a RELOAD never
        // waits on DNS, and a name that fails now may answer by then.
        let s = ConnectSettings::resolve(&config, key, Default::default());
        if s.targets.is_empty() {
            return Err(format!(
                "database {}: host {:?} names no server",
                key.db, s.host
            ));
        }
    }
    *shard.admin.pending.borrow_mut() = Some((config, files));
    Ok(0)
}

/// Phase 2 on one shard.
pub fn apply_on_shard(shard: &Rc<Shard>) -> Result<u32, String> {
    let (config, files) = shard
        .admin
        .pending
        .borrow_mut()
        .take()
        .ok_or_else(|| format!("shard {} has no validated configuration", shard.id))?;
    shard.apply_config(config, files);
    shard.state_changed.notify_all();
    Ok(0)
}

/// The restart-only keys, each kept at its running value.
macro_rules! keep_fields {
    ($old:expr, $new:expr, $notes:expr, $($field:ident),* $(,)?) => {
        $(
            if $old.general.$field != $new.general.$field {
                $notes.push(format!(
                    "{} needs a restart to change; keeping {:?}",
                    stringify!($field),
                    $old.general.$field
                ));
                $new.general.$field = $old.general.$field.clone();
            }
        )*
    };
}

/// Names the macro call below covers (checked against `RESTART_KEYS`).
#[cfg(test)]
const KEPT: &[&str] = &[
    "listen_addr",
    "listen_port",
    "listen_backlog",
    "unix_socket_dir",
    "unix_socket_mode",
    "unix_socket_group",
    "so_reuseport",
    "peer_id",
    "pkt_buf",
    "pidfile",
    "track_extra_parameters",
    "workers",
    "ring_depth",
    "pin_shards",
    "spin_before_park_us",
    "stats_listen",
    "user",
    "syslog",
    "syslog_ident",
    "syslog_facility",
];

fn keep_restart_keys(old: &Config, new: &mut Config) -> Vec<String> {
    let mut notes = Vec::new();
    keep_fields!(
        old,
        new,
        notes,
        listen_addr,
        listen_port,
        listen_backlog,
        unix_socket_dir,
        unix_socket_mode,
        unix_socket_group,
        so_reuseport,
        peer_id,
        pkt_buf,
        pidfile,
        track_extra_parameters,
        workers,
        ring_depth,
        pin_shards,
        spin_before_park_us,
        stats_listen,
        user,
        syslog,
        syslog_ident,
        syslog_facility,
    );
    notes
}

/// Databases whose entry differs (their servers must be reopened).
fn changed_databases(old: &Config, new: &Config) -> Vec<String> {
    old.databases
        .iter()
        .filter(|(name, entry)| new.databases.get(*name).is_some_and(|n| n != *entry))
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_keys_are_the_restart_keys() {
        let mut a: Vec<_> = KEPT.to_vec();
        let mut b: Vec<_> = RESTART_KEYS.to_vec();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn restart_keys_keep_running_values() {
        let old = Config::default();
        let mut new = Config::default();
        new.general.listen_port = 7000;
        new.general.default_pool_size = 7;
        let notes = keep_restart_keys(&old, &mut new);
        assert_eq!(new.general.listen_port, old.general.listen_port);
        assert_eq!(new.general.default_pool_size, 7);
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    #[test]
    fn set_values_take_the_key_type() {
        let t = toml::Table::try_from(General::default()).expect("table");
        let mut t2 = t.clone();
        for (k, v) in [
            ("default_pool_size", "5"),
            ("reserve_pool_timeout", "0.5"),
            ("server_fast_close", "1"),
            ("pool_mode", "transaction"),
            ("admin_users", "a, b"),
        ] {
            t2.insert(k.into(), typed_value(t.get(k), v));
        }
        let g: General = t2.try_into().expect("general");
        assert_eq!(g.default_pool_size, 5);
        assert_eq!(g.reserve_pool_timeout.0, 0.5);
        assert!(g.server_fast_close);
        assert_eq!(g.pool_mode, crate::config::PoolMode::Transaction);
        assert_eq!(g.admin_users, ["a", "b"]);
    }
}
