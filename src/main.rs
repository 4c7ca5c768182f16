//! The `pgring` binary: parse the command line (PgBouncer's flags), load the configuration
//! (TOML or pgbouncer.ini), become a daemon if asked, set up logging, run the shards.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use pgring::config::Config;
use pgring::process;
use pgring::runtime::BootError;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

/// A thread-per-core PostgreSQL connection pooler, drop-in for PgBouncer.
///
/// `pgring FILE.ini` reads PgBouncer's own configuration file; any other name is TOML.
#[derive(Parser, Debug)]
#[command(name = "pgring", version, about)]
struct Cli {
    /// Configuration file: pgbouncer.ini (by its .ini extension) or TOML.
    config: Option<PathBuf>,
    /// Configuration file (alternative to the positional argument).
    #[arg(long = "config", short = 'c')]
    config_flag: Option<PathBuf>,
    /// Run in the background (needs `logfile`: standard output goes to /dev/null).
    #[arg(short, long)]
    daemon: bool,
    /// Increase verbosity (-v, -vv), on top of the config's `verbose`.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Quiet: do not log to stderr (the logfile still gets everything), as PgBouncer's -q.
    #[arg(short, long)]
    quiet: bool,
    /// Switch to this Unix user once the listeners are bound (overrides `user` in the config).
    #[arg(short, long)]
    user: Option<String>,
    /// PgBouncer's online restart: not supported; see the message.
    #[arg(short = 'R', long)]
    reboot: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.reboot {
        eprintln!(
            "pgring: -R (online restart by socket takeover) is not supported: start the new \
             pgring beside the old one on the same port (both listen with SO_REUSEPORT), then \
             stop the old one with SHUTDOWN WAIT_FOR_CLIENTS or SIGTERM"
        );
        return ExitCode::from(2);
    }
    let Some(path) = cli.config_flag.clone().or(cli.config.clone()) else {
        eprintln!("usage: pgring [-d] [-q] [-v] [-u USER] CONFIG.ini|CONFIG.toml");
        return ExitCode::from(2);
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgring: {}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    match start(&cli, config, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgring: {e}");
            tracing::error!(error = %e, "pgring stopped");
            ExitCode::from(1)
        }
    }
}

/// Everything after the configuration loaded: daemon, logging, pidfile, privileges, shards.
fn start(cli: &Cli, config: Config, path: PathBuf) -> Result<(), String> {
    let g = &config.general;
    if cli.daemon && g.logfile.is_none() && !g.syslog {
        return Err(
            "-d needs logfile or syslog set: a daemon's standard error goes nowhere".into(),
        );
    }
    if let Some(pidfile) = &g.pidfile {
        process::check_pidfile(pidfile).map_err(|e| e.to_string())?;
    }
    if cli.daemon {
        // Before any thread exists: fork is only sound in a single-threaded process.
        process::daemonize().map_err(|e| format!("cannot become a daemon: {e}"))?;
    }
    init_logging(cli, &config)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let pidfile = g.pidfile.clone();
    let user = cli.user.clone().or_else(|| g.user.clone());
    let after_bind = || after_bind(user.as_deref(), pidfile.as_deref());
    let result = pgring::runtime::run(config, path, after_bind);
    if let Some(pidfile) = &pidfile {
        process::remove_pidfile(pidfile);
    }
    result.map_err(|e| e.to_string())
}

/// Runs between binding and starting the shards: drop root, then write the pidfile (so it
/// names a process that is listening, as PgBouncer's order).
fn after_bind(user: Option<&str>, pidfile: Option<&Path>) -> Result<(), BootError> {
    if let Some(user) = user {
        process::drop_privileges(user)
            .map_err(|e| BootError::Process(format!("cannot switch to user {user}: {e}")))?;
    }
    if let Some(pidfile) = pidfile {
        process::write_pidfile(pidfile).map_err(|e| {
            BootError::Process(format!("cannot write pidfile {}: {e}", pidfile.display()))
        })?;
    }
    Ok(())
}

/// stderr unless `-q`, plus the logfile when set, plus the system logger with `syslog`;
/// level from `verbose` + `-v` (RUST_LOG wins).
fn init_logging(cli: &Cli, config: &Config) -> Result<(), String> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let g = &config.general;
    let level = match g.verbose.saturating_add(cli.verbose) {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // A daemon's stderr is /dev/null anyway.
    let quiet = cli.quiet || cli.daemon;
    let stderr = std::io::stderr.with_filter(move |_| !quiet);
    let file = match &g.logfile {
        Some(path) => Some(
            process::open_logfile(path)
                .map_err(|e| format!("cannot open logfile {}: {e}", path.display()))?,
        ),
        None => None,
    };
    // Colours only for a person at a terminal: not in a logfile, the journal or a pipe.
    let ansi = file.is_none() && !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let local = tracing_subscriber::fmt::layer().with_ansi(ansi);
    let local = match file {
        Some(file) => local.with_writer(BoxMakeWriter::new(stderr.and(file))),
        None => local.with_writer(BoxMakeWriter::new(stderr)),
    };
    // The system logger stamps the time itself.
    let syslog = match g.syslog {
        true => Some(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .with_writer(pgring::syslog::open(&g.syslog_ident, &g.syslog_facility)?),
        ),
        false => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(local)
        .with(syslog)
        .init();
    Ok(())
}
