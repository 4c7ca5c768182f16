//! The shard: one pinned executor's world.
//!
//! [`Shard`] owns, without locks, everything that lives on one core: its
//! client sessions, its slice of every pool, its cancel-key table, its buffer
//! free list and its stats. [`Shared`] is the little that all shards see:
//! configuration snapshots, the global pool budgets, the client count, and
//! the control channel from the signal thread. Nothing here is touched per
//! transaction except through the `Rc<Pool>` a session already holds.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crossbeam::channel::{Receiver, Sender};
use tracing::{info, warn};

use super::files::{load_files, Files};
use super::mesh::{MeshEnds, MeshMsg, Outbox};
use super::{io::BufPool, BootError};
use crate::client::ClientInfo;
use crate::config::Config;
use crate::pool::{Counter, GlobalPool, Pool, PoolKey};
use crate::protocol::startup::CancelKey;
use crate::stats::ShardStats;

/// A control event, from a signal or the admin console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// PAUSE: finish running transactions, hold new ones.
    Pause,
    /// RESUME.
    Resume,
    /// RELOAD configuration and the files it names.
    Reload,
    /// SHUTDOWN WAIT_FOR_CLIENTS: stop accepting, exit when clients are gone.
    ShutdownWaitClients,
    /// SHUTDOWN WAIT_FOR_SERVERS: stop accepting, exit when no server is in use.
    ShutdownWaitServers,
    /// Immediate shutdown.
    ShutdownNow,
}

/// State shared by all shards (behind `Arc`); touched at login, at server
/// open/close and by the console, never per transaction.
pub struct Shared {
    /// Number of shards.
    pub workers: usize,
    /// Where the configuration came from (for RELOAD).
    pub config_path: PathBuf,
    config: RwLock<Arc<Config>>,
    files: RwLock<Arc<Files>>,
    /// Logged-in and logging-in clients across all shards (max_client_conn).
    pub client_count: AtomicUsize,
    pools: RwLock<HashMap<PoolKey, Arc<GlobalPool>>>,
    /// Server connections per database (max_db_connections).
    db_servers: RwLock<HashMap<Arc<str>, Arc<Counter>>>,
    /// Server connections per user (max_user_connections).
    user_servers: RwLock<HashMap<Arc<str>, Arc<Counter>>>,
    /// Client connections per database (max_db_client_connections).
    pub db_clients: RwLock<HashMap<Arc<str>, Arc<Counter>>>,
    /// Client connections per user (max_user_client_connections).
    pub user_clients: RwLock<HashMap<Arc<str>, Arc<Counter>>>,
    controls: Vec<Sender<Control>>,
    control_rx: Vec<Receiver<Control>>,
    running: AtomicUsize,
    /// Set once a shutdown has begun.
    pub stop_requested: AtomicBool,
    /// Process start, for SHOW STATE / uptime.
    pub started: std::time::Instant,
    /// Each shard's published load, for moving clients (`client::balance`).
    pub loads: Box<[crossbeam::utils::CachePadded<crate::client::balance::ShardLoad>]>,
    /// Cancel requests forwarded to `[peers]`, capped per peer (`client::peers`).
    pub peer_pools: crate::client::peers::PeerPools,
    /// The shard threads, for their CPU and CPU-wait totals (`runtime::sched`).
    pub threads: super::sched::ShardThreads,
}

impl Shared {
    /// Builds the shared state; loads the files the configuration names.
    pub fn new(config: Config, config_path: PathBuf, workers: usize) -> Result<Self, BootError> {
        let files = load_files(&config).map_err(BootError::AuthFile)?;
        let (controls, control_rx) = (0..workers)
            .map(|_| crossbeam::channel::unbounded())
            .unzip();
        Ok(Shared {
            workers,
            config_path,
            config: RwLock::new(Arc::new(config)),
            files: RwLock::new(Arc::new(files)),
            client_count: AtomicUsize::new(0),
            pools: RwLock::new(HashMap::new()),
            db_servers: RwLock::default(),
            user_servers: RwLock::default(),
            db_clients: RwLock::default(),
            user_clients: RwLock::default(),
            controls,
            control_rx,
            running: AtomicUsize::new(workers),
            stop_requested: AtomicBool::new(false),
            started: std::time::Instant::now(),
            loads: crate::client::balance::loads(workers),
            peer_pools: Default::default(),
            threads: super::sched::ShardThreads::new(workers),
        })
    }

    /// The current configuration snapshot.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Publishes a new configuration and its files (after every shard
    /// accepted it).
    pub fn replace_config(&self, config: Arc<Config>, files: Arc<Files>) {
        if let Ok(mut c) = self.config.write() {
            *c = config;
        }
        if let Ok(mut u) = self.files.write() {
            *u = files;
        }
    }

    /// The current snapshot of the files the configuration names.
    pub fn files(&self) -> Arc<Files> {
        self.files
            .read()
            .map(|u| u.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The global budget of a pool, created on first use.
    pub fn global_pool(&self, key: &PoolKey) -> Arc<GlobalPool> {
        if let Some(p) = self.pools.read().ok().and_then(|m| m.get(key).cloned()) {
            return p;
        }
        let db = counter(&self.db_servers, &key.db);
        let user = counter(&self.user_servers, &key.user);
        let mut map = self.pools.write().unwrap_or_else(|e| e.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(GlobalPool::new(self.workers, db, user)))
            .clone()
    }

    /// Forgets the global part of pools that no shard has a slice of any more (their
    /// automatic database went unused, see `Pool::expire_if_unused`). A slice holds its
    /// global part, so one held only by this table has no slice, no server and no client; the
    /// write lock keeps a shard from taking it meanwhile.
    pub fn forget_unused_global_pools(&self) {
        let unused =
            |m: &HashMap<PoolKey, Arc<GlobalPool>>| m.values().any(|g| Arc::strong_count(g) == 1);
        if !self.pools.read().map(|m| unused(&m)).unwrap_or(false) {
            return;
        }
        if let Ok(mut m) = self.pools.write() {
            m.retain(|_, g| Arc::strong_count(g) > 1);
        }
    }

    /// Every global pool (console).
    pub fn global_pools(&self) -> Vec<(PoolKey, Arc<GlobalPool>)> {
        self.pools
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Sends a control event to every shard.
    pub fn post_control(&self, control: Control) {
        if matches!(
            control,
            Control::ShutdownNow | Control::ShutdownWaitClients | Control::ShutdownWaitServers
        ) {
            self.stop_requested.store(true, Ordering::Release);
        }
        for tx in &self.controls {
            let _ = tx.send(control);
        }
    }

    /// True once every shard has stopped.
    pub fn is_stopped(&self) -> bool {
        self.running.load(Ordering::Acquire) == 0
    }
}

/// The counter for `name` in a map, created on first use (login and
/// pool creation only: never per transaction).
pub fn counter(map: &RwLock<HashMap<Arc<str>, Arc<Counter>>>, name: &str) -> Arc<Counter> {
    if let Some(c) = map.read().ok().and_then(|m| m.get(name).cloned()) {
        return c;
    }
    let mut m = map.write().unwrap_or_else(|e| e.into_inner());
    m.entry(name.into()).or_default().clone()
}

/// One core's world.
pub struct Shard {
    /// Shard index (0-based); encoded in every cancel key it hands out.
    pub id: usize,
    /// What all shards share.
    pub shared: Arc<Shared>,
    config: RefCell<Arc<Config>>,
    files: RefCell<Arc<Files>>,
    /// This shard's slice of every pool.
    pub pools: RefCell<HashMap<PoolKey, Rc<Pool>>>,
    /// Live client sessions, by the cancel key pgring gave each. One table serves cancel
    /// routing and the console (a second one, by id, cost every idle client ~28 bytes);
    /// KILL_CLIENT, the one lookup by id, scans it, as PgBouncer scans its client lists
    /// for a cancel key.
    pub clients: RefCell<HashMap<CancelKey, Rc<ClientInfo>>>,
    /// The TLS version and cipher of the clients that use TLS (SHOW CLIENTS `tls`): here, not
    /// in `ClientInfo`, so that the others carry nothing for it.
    pub tls_clients: RefCell<HashMap<CancelKey, Box<str>>>,
    /// Senders to the other shards.
    pub mesh: Outbox,
    /// Relay buffer free list.
    pub bufs: BufPool,
    /// Counters and latency histograms.
    pub stats: ShardStats,
    /// The console's per-shard state (paused/disabled databases...).
    pub admin: crate::admin::ShardAdmin,
    next_id: Cell<u64>,
    /// Servers of this shard being closed: waiting for PostgreSQL to close its end, their
    /// budget slots still taken (`Pool::retire`).
    pub closing: Cell<u32>,
    /// PAUSE in force.
    pub paused: Cell<bool>,
    /// Shutdown mode, once one began.
    pub stopping: Cell<Option<Control>>,
    /// Secrets from auth_query and SCRAM pass-through keys (login-time only).
    pub auth_cache: crate::client::auth_query::AuthCache,
    /// Wakes tasks waiting for RESUME or for the shard to stop.
    pub state_changed: crate::pool::Notify,
    /// Cancel requests on their way to this shard's servers (`client::cancel`).
    pub cancelling: crate::client::cancel::InFlight,
    /// This shard's side of moving clients between shards.
    pub balance: crate::client::balance::Balance,
}

impl Shard {
    /// The configuration snapshot this shard runs with.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// The files (auth file, hba rules, TLS) this shard logs clients in and servers on with.
    pub fn files(&self) -> Arc<Files> {
        self.files.borrow().clone()
    }

    /// Switches to a configuration every shard validated (RELOAD phase 2).
    pub fn apply_config(&self, config: Arc<Config>, files: Arc<Files>) {
        crate::logs::set(&config.general);
        *self.config.borrow_mut() = config;
        *self.files.borrow_mut() = files;
        self.auth_cache.expire();
        for pool in self.pools.borrow().values() {
            pool.reconfigure(self);
        }
    }

    /// A process-unique id for a client or server connection: the shard in
    /// the low byte, so ids never collide across shards.
    pub fn next_id(&self) -> u64 {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        (n << 8) | self.id as u64
    }

    /// This shard's slice of a pool, created on first use.
    pub fn pool(self: &Rc<Self>, key: &PoolKey) -> Rc<Pool> {
        if let Some(p) = self.pools.borrow().get(key) {
            return p.clone();
        }
        let pool = Rc::new(Pool::new(self, key.clone(), self.shared.global_pool(key)));
        self.pools.borrow_mut().insert(key.clone(), pool.clone());
        pool
    }

    /// True once this shard stops taking new work.
    pub fn is_stopping(&self) -> bool {
        self.stopping.get().is_some()
    }

    /// Handles a message from another shard.
    pub fn handle_mesh(self: &Rc<Self>, msg: MeshMsg) {
        match msg {
            MeshMsg::Cancel(key, done) => {
                crate::client::cancel::cancel_local(self, key, true, done)
            }
            MeshMsg::CancelMoved(key, done) => {
                crate::client::cancel::cancel_local(self, key, false, done)
            }
            MeshMsg::Client(moving) => crate::client::arrive(self, moving),
            MeshMsg::Handoff { pool, server } => self.pool(&pool).adopt(self, server),
            MeshMsg::Steal { pool, from } => {
                if let Some(p) = self.pools.borrow().get(&pool).cloned() {
                    p.give_to_shard(self, from);
                }
            }
            MeshMsg::Evict { pool, by } => {
                crate::pool::evict_idle(self, &pool, by);
            }
            MeshMsg::Admin(req) => crate::admin::serve_remote(self, req),
        }
    }

    fn on_control(self: &Rc<Self>, control: Control) {
        info!(shard = self.id, ?control, "control");
        match control {
            Control::Pause => self.paused.set(true),
            Control::Resume => self.paused.set(false),
            Control::Reload => {
                if self.id == 0 {
                    crate::admin::reload::reload(self.clone());
                }
            }
            stop => {
                if self.stopping.get() != Some(Control::ShutdownNow) {
                    self.stopping.set(Some(stop));
                }
            }
        }
        self.state_changed.notify_all();
    }

    fn poll_controls(self: &Rc<Self>, rx: &Receiver<Control>) {
        while let Ok(c) = rx.try_recv() {
            self.on_control(c);
        }
    }

    /// Live clients on this shard.
    pub fn client_count(&self) -> usize {
        self.clients.borrow().len()
    }
}

/// Janitor period: timeouts, reserve pool, budget re-checks, controls.
pub const TICK: Duration = Duration::from_millis(100);

/// Runs one shard until shutdown completes.
pub async fn run_shard(
    id: usize,
    shared: Arc<Shared>,
    listeners: Vec<std::net::TcpListener>,
    unix: Option<std::os::unix::net::UnixListener>,
    ends: MeshEnds,
) {
    let slot = Rc::new(std::cell::OnceCell::new());
    let mesh = ends.connect(slot.clone()).await;
    let config = shared.config();
    crate::logs::set(&config.general);
    let files = shared.files();
    let control_rx = shared.control_rx[id].clone();
    let shard = Rc::new(Shard {
        id,
        shared: shared.clone(),
        config: RefCell::new(config),
        files: RefCell::new(files),
        pools: RefCell::new(HashMap::new()),
        clients: RefCell::new(HashMap::new()),
        tls_clients: RefCell::new(HashMap::new()),
        mesh,
        bufs: BufPool::default(),
        stats: ShardStats::default(),
        admin: Default::default(),
        next_id: Cell::new(0),
        closing: Cell::new(0),
        paused: Cell::new(false),
        stopping: Cell::new(None),
        auth_cache: Default::default(),
        state_changed: crate::pool::Notify::default(),
        cancelling: Default::default(),
        balance: Default::default(),
    });
    let _ = slot.set(shard.clone());
    crate::janitor::start(&shard);
    crate::stats::period::start(&shard);
    let accept = crate::listener::serve(shard.clone(), listeners, unix);
    // The tick never ends: the accept loops end once they see the stop and have taken what
    // their listeners had queued.
    let tick = async {
        loop {
            super::sleep(TICK).await;
            shard.poll_controls(&control_rx);
        }
    };
    futures_lite::future::or(accept, tick).await;
    drain(&shard, &control_rx).await;
    info!(shard = id, "shard stopped");
    if shared.running.fetch_sub(1, Ordering::AcqRel) == 1 {
        info!("all shards stopped");
    }
}

/// After the listener closed: wait as the shutdown mode says, then close.
async fn drain(shard: &Rc<Shard>, control_rx: &Receiver<Control>) {
    loop {
        shard.poll_controls(control_rx);
        let done = match shard.stopping.get() {
            Some(Control::ShutdownWaitClients) => shard.client_count() == 0,
            Some(Control::ShutdownWaitServers) => {
                shard.pools.borrow().values().all(|p| p.active_count() == 0)
            }
            _ => true,
        };
        if done {
            break;
        }
        super::sleep(TICK).await;
    }
    let closing: Vec<_> = shard.clients.borrow().values().cloned().collect();
    if !closing.is_empty() {
        warn!(
            shard = shard.id,
            clients = closing.len(),
            "closing clients at shutdown"
        );
    }
    for c in closing {
        c.kill("server shutting down");
    }
    for pool in shard.pools.borrow().values() {
        pool.close_idle(shard, "server shutting down");
    }
    // Give killed sessions a moment to write their goodbye.
    super::sleep(Duration::from_millis(50)).await;
}
