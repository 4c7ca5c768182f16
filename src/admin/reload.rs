//! RELOAD: re-read the configuration and auth file, validate, and switch
//! every shard (two-phase: all or none).

use std::rc::Rc;
use std::sync::Arc;

use tracing::{error, info};

use crate::config::Config;
use crate::runtime::shard::load_userlist;
use crate::runtime::Shard;

/// Reloads from the file pgring was started with. Runs on shard 0.
pub fn reload(shard: Rc<Shard>) {
    let path = shard.shared.config_path.clone();
    match Config::load(&path)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            let u = load_userlist(&c)?;
            Ok((c, u))
        }) {
        Ok((config, userlist)) => {
            shard
                .shared
                .replace_config(Arc::new(config), Arc::new(userlist));
            info!(path = %path.display(), "configuration reloaded");
        }
        Err(e) => {
            error!(path = %path.display(), error = %e, "RELOAD failed; configuration unchanged")
        }
    }
}
