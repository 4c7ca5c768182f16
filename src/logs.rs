//! Which of PgBouncer's optional log lines are written: `log_connections` (a client logged in,
//! a server connection opened), `log_disconnections` (a client or server closed, with the
//! reason) and `log_pooler_errors` (an error pgring itself sent a client). Process-wide flags,
//! set at start and at every RELOAD or SET, read where the lines are written, so nothing looks
//! the configuration up per connection.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::General;

static CONNECTIONS: AtomicBool = AtomicBool::new(true);
static DISCONNECTIONS: AtomicBool = AtomicBool::new(true);
static POOLER_ERRORS: AtomicBool = AtomicBool::new(true);

/// Takes the three flags from `g`.
pub fn set(g: &General) {
    CONNECTIONS.store(g.log_connections, Ordering::Relaxed);
    DISCONNECTIONS.store(g.log_disconnections, Ordering::Relaxed);
    POOLER_ERRORS.store(g.log_pooler_errors, Ordering::Relaxed);
}

/// `log_connections`.
pub fn connections() -> bool {
    CONNECTIONS.load(Ordering::Relaxed)
}

/// `log_disconnections`.
pub fn disconnections() -> bool {
    DISCONNECTIONS.load(Ordering::Relaxed)
}

/// `log_pooler_errors`.
pub fn pooler_errors() -> bool {
    POOLER_ERRORS.load(Ordering::Relaxed)
}
