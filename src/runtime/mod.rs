//! The only room that knows io_uring and threads.
//!
//! It boots `workers` pinned shard threads (one per core by default), each running its own
//! executor over its own io_uring (`executor`, `reactor`), wires the mesh of lock-free inboxes
//! between them, and hands every other room a small vocabulary: [`Stream`], [`spawn`],
//! [`sleep`], [`connect`], and the [`Shard`] context. (pgring first ran on glommio; the swap to
//! this leaner loop touched this folder and nothing else: see `executor` for why.)
//!
//! Signals are taken by the main thread with `sigwait` (they are blocked in
//! every shard thread) and published through [`Shared::post_control`]; each shard's
//! janitor tick notices the change. Signals are rare; a 100 ms reaction is fine
//! and keeps signal handling out of the shards' hot loops.

mod buf;
mod executor;
pub mod files;
pub mod io;
pub mod isolate;
pub mod mesh;
mod reactor;
pub mod recycle;
pub mod sched;
pub mod shard;
mod spare;
pub mod tcp;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod wait_group;

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

pub use io::{connect, sleep, spawn, Stream};
pub use shard::{Control, Shard, Shared};
pub use spare::spun_total;

use crate::config::Config;
use crate::listener;

/// Boots the shards and blocks until they all stop. `after_bind` runs once every listener is
/// bound and before any shard thread exists: the place to drop root privileges (`-u`) and
/// write the pidfile, as PgBouncer does after `pooler_setup`. An error from it stops the start.
pub fn run(
    config: Config,
    config_path: std::path::PathBuf,
    after_bind: impl FnOnce() -> Result<(), BootError>,
) -> Result<(), BootError> {
    let workers = worker_count(&config);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let shared = Arc::new(Shared::new(config, config_path, workers)?);
    let mut meshes = mesh::build(workers);
    // Listeners are bound up front so a bad address fails the start, not a shard. The unix
    // socket is one path, so it is bound once and served by shard 0 (see `listener`).
    let listeners = (0..workers)
        .map(|_| listener::bind(&shared.config()))
        .collect::<Result<Vec<_>, _>>()?;
    let unix = listener::bind_unix(&shared.config())?;
    let unix_path = unix.as_ref().map(|u| u.path.clone());
    let mut unix = unix.map(|u| u.listener);
    if let Err(e) = after_bind() {
        if let Some(path) = &unix_path {
            listener::remove_unix(path);
        }
        return Err(e);
    }
    block_signals();
    let mut handles = Vec::new();
    let (booted_tx, booted_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    for (id, (listen, ends)) in listeners.into_iter().zip(meshes.drain(..)).enumerate() {
        let unix = if id == 0 { unix.take() } else { None };
        let shared = shared.clone();
        let general = &shared.config().general;
        let core = cores
            .get(id % cores.len().max(1))
            .copied()
            .filter(|_| general.pin_shards);
        let spin = Duration::from_micros(general.spin_before_park_us);
        let entries = u32::try_from(general.ring_depth).unwrap_or(u32::MAX);
        let booted = booted_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("pgring-shard-{id}"))
            .spawn(move || {
                shared.threads.register_current(id);
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let main = {
                    let booted = booted.clone();
                    async move {
                        let _ = booted.send(Ok(()));
                        shard::run_shard(id, shared, listen, unix, ends).await
                    }
                };
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    executor::block_on(main, entries, spin)
                }));
                match ran {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let _ = booted.send(Err(e.to_string()));
                    }
                    // A client session's panic ends that session alone (`isolate`); one here
                    // is in the shard's own tasks (listener, janitor, mesh), whose state every
                    // client of the shard depends on. A shard cannot be restarted in place (its
                    // listener would stay in the SO_REUSEPORT group, taking connections no one
                    // accepts), so the process stops for its supervisor to restart it.
                    Err(payload) => {
                        error!(
                            shard = id,
                            panic = isolate::panic_message(payload.as_ref()),
                            "a shard panicked (a bug in pgring): pgring stops"
                        );
                        std::process::exit(70);
                    }
                }
            })
            .map_err(|e| BootError::Shard(id, e.to_string()))?;
        handles.push(handle);
        match booted_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BootError::Shard(id, e)),
            Err(_) => return Err(BootError::Shard(id, "shard thread died".into())),
        }
    }
    info!(workers, "pgring started");
    crate::notify_ready();
    let gauge = if shared.config().general.spin_before_park_us > 0 {
        spare::Gauge::new(cores.iter().map(|c| c.id).collect())
    } else {
        None
    };
    wait_for_signals(&shared, gauge);
    for h in handles {
        if h.join().is_err() {
            error!("shard thread panicked");
        }
    }
    if let Some(path) = unix_path {
        listener::remove_unix(&path);
    }
    Ok(())
}

/// `workers = 0` means one shard per available core.
fn worker_count(config: &Config) -> usize {
    match config.general.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    }
}

const HANDLED_SIGNALS: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write into the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the handled signals in this thread; threads spawned afterwards
/// inherit the mask, so only `sigwait` in the main thread sees them.
fn block_signals() {
    let set = signal_set();
    // SAFETY: pthread_sigmask with a valid set and a null old-set pointer.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// The main thread's loop: takes signals, and between them samples the host's spare CPU for the
/// shards' spinning (`gauge`, when spinning is configured).
fn wait_for_signals(shared: &Arc<Shared>, mut gauge: Option<spare::Gauge>) {
    let set = signal_set();
    let mut term_seen = false;
    while !shared.is_stopped() {
        if let Some(g) = &mut gauge {
            g.sample(std::time::Instant::now());
        }
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: i64::try_from(spare::SAMPLE_EVERY.as_nanos()).unwrap_or(100_000_000),
        };
        // SAFETY: sigtimedwait on a valid set; a null siginfo pointer is allowed.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if sig < 0 {
            continue;
        }
        let control = match sig {
            libc::SIGTERM if term_seen => Control::ShutdownNow,
            libc::SIGTERM => {
                term_seen = true;
                Control::ShutdownWaitClients
            }
            libc::SIGINT => Control::ShutdownWaitServers,
            libc::SIGQUIT => Control::ShutdownNow,
            libc::SIGHUP => Control::Reload,
            libc::SIGUSR1 => Control::Pause,
            libc::SIGUSR2 => Control::Resume,
            _ => continue,
        };
        if sig == libc::SIGHUP {
            // PgBouncer reopens its logfile on SIGHUP (for logrotate) before reloading.
            crate::process::reopen_logfile();
        }
        info!(signal = sig, ?control, "got signal");
        shared.post_control(control);
    }
}

/// Why pgring could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A listener could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The auth file could not be read.
    #[error("auth_file: {0}")]
    AuthFile(String),
    /// An executor could not start.
    #[error("cannot start shard {0}: {1}")]
    Shard(usize, String),
    /// The process could not be set up after binding (privilege drop, pidfile).
    #[error("{0}")]
    Process(String),
}
