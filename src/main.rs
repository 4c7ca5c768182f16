//! The `pgring` binary: parse the command line, load the configuration,
//! set up logging, run the shards.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// A thread-per-core PostgreSQL connection pooler, drop-in for PgBouncer.
#[derive(Parser, Debug)]
#[command(name = "pgring", version, about)]
struct Cli {
    /// Configuration file (TOML).
    config: Option<PathBuf>,
    /// Configuration file (alternative to the positional argument).
    #[arg(long = "config", short = 'c')]
    config_flag: Option<PathBuf>,
    /// Increase verbosity (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Quiet: only warnings and errors.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(path) = cli.config_flag.or(cli.config) else {
        eprintln!("usage: pgring CONFIG.toml");
        return ExitCode::from(2);
    };
    let config = match pgring::config::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgring: {}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    match pgring::runtime::run(config, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgring: {e}");
            ExitCode::from(1)
        }
    }
}
