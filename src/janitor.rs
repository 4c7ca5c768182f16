//! Per-shard timers: every tick each pool slice expires waiters past
//! `query_wait_timeout`, opens the reserve pool for clients waiting longer
//! than `reserve_pool_timeout`, hands free budget to waiters, asks other
//! shards for idle servers, closes servers past `server_idle_timeout` or
//! `server_lifetime`, and refills `min_pool_size`. Every second it also gives
//! back relay buffers a burst left unused and drops pools of automatic (`*`)
//! databases unused for `autodb_idle_timeout`. One timer per shard, not one per
//! connection.

use std::rc::Rc;

use crate::runtime::{self, shard::TICK, Shard};

/// Starts the janitor task of `shard`.
pub fn start(shard: &Rc<Shard>) {
    let shard = shard.clone();
    runtime::spawn(async move {
        let per_second = (1000 / TICK.as_millis().max(1)).max(1) as u32;
        let mut ticks = 0u32;
        loop {
            runtime::sleep(TICK).await;
            let pools: Vec<_> = shard.pools.borrow().values().cloned().collect();
            let second = ticks.is_multiple_of(per_second);
            let now = runtime::io::now();
            for pool in pools {
                if second && pool.expire_if_unused(&shard, now) {
                    continue;
                }
                pool.tick(&shard);
                pool.fill_min(&shard);
            }
            crate::client::balance::tick(&shard);
            ticks = ticks.wrapping_add(1);
            if second {
                crate::admin::control::fast_close(&shard);
                shard.bufs.trim();
                if shard.id == 0 {
                    shard.shared.forget_unused_global_pools();
                }
            }
        }
    });
}
