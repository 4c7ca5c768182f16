//! Black-box tests: the real `pgring` binary between real drivers and a real PostgreSQL 15.
//!
//! One test binary on purpose: the fixture in `common` starts one throwaway PostgreSQL the first
//! time a test asks for it, and every test of the run shares it (tests run on parallel threads,
//! each with its own pgring process). The cluster is stopped and removed when this process exits,
//! however it exits. Run with `cargo test --test it`; `-- fixture` runs just the fixture checks.

mod common;

mod admin;
mod auth;
mod authquery;
mod copy;
mod core;
mod drivers;
mod dropin;
mod fixture;
mod hba;
mod load;
mod pipelines;
mod pool;
mod prepared;
mod protocol;
mod restart;
mod settings;
mod tls;
