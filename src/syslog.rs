//! `syslog = 1`: log lines also go to the system logger, as PgBouncer sends them, tagged
//! `syslog_ident[pid]` under `syslog_facility`.
//!
//! Each line is one datagram on the `/dev/log` socket (what glibc's `syslog(3)` does), in the
//! traditional `<PRI>ident[pid]: message` form that journald and rsyslog both read; they stamp
//! the time themselves. The socket is non-blocking: a logger that cannot keep up loses lines
//! rather than stalling a shard (they are counted and the count is logged once the logger
//! takes lines again). A logger that restarts is reconnected on the next line.
//!
//! `PGRING_SYSLOG_SOCKET` names another socket than `/dev/log` (tests, containers that mount
//! the host's socket elsewhere).

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The facilities PgBouncer accepts, with their syslog codes.
const FACILITIES: &[(&str, u8)] = &[
    ("auth", 4),
    ("authpriv", 10),
    ("daemon", 3),
    ("user", 1),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// The code of a `syslog_facility` name (case-insensitive), if it is one.
pub fn facility_code(name: &str) -> Option<u8> {
    FACILITIES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, code)| code)
}

/// The names `syslog_facility` accepts, for an error message.
pub fn facility_names() -> String {
    let names: Vec<&str> = FACILITIES.iter().map(|(n, _)| *n).collect();
    names.join(", ")
}

/// syslog's severity for a tracing level.
fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

struct Logger {
    path: PathBuf,
    socket: Mutex<Option<UnixDatagram>>,
    /// `ident[pid]: `, written after the priority.
    tag: String,
    facility: u8,
    /// Lines the logger did not take since the last one it did.
    dropped: AtomicU64,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn connect(path: &PathBuf) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(path)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

impl Logger {
    fn send(&self, severity: u8, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let mut datagram = Vec::with_capacity(line.len() + self.tag.len() + 6);
        let _ = write!(datagram, "<{}>{}", self.facility * 8 + severity, self.tag);
        datagram.extend_from_slice(line);
        let mut socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..2 {
            if socket.is_none() {
                *socket = connect(&self.path).ok();
            }
            let Some(s) = socket.as_ref() else { break };
            match s.send(&datagram) {
                Ok(_) => {
                    let lost = self.dropped.swap(0, Ordering::Relaxed);
                    if lost > 0 {
                        let note = format!(
                            "<{}>{}{lost} log lines were lost: the system logger was not taking them",
                            self.facility * 8 + 4,
                            self.tag
                        );
                        let _ = s.send(note.as_bytes());
                    }
                    return;
                }
                // Full: lose the line rather than stall a shard.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The logger restarted (or went away): reconnect once.
                Err(_) if attempt == 0 => *socket = None,
                Err(_) => break,
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts sending log lines to the system logger as `ident` under `facility` (a name
/// [`facility_code`] knows). The socket not being there yet is no error: it is tried again
/// at each line.
pub fn open(ident: &str, facility: &str) -> Result<SyslogWriter, String> {
    let facility = facility_code(facility).ok_or_else(|| {
        format!(
            "syslog_facility \"{facility}\" is not one of {}",
            facility_names()
        )
    })?;
    let path = std::env::var_os("PGRING_SYSLOG_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/log"));
    let socket = connect(&path).ok();
    let _ = LOGGER.set(Logger {
        path,
        socket: Mutex::new(socket),
        tag: format!("{ident}[{}]: ", std::process::id()),
        facility,
        dropped: AtomicU64::new(0),
    });
    Ok(SyslogWriter { severity: 6 })
}

/// tracing's writer for the system logger: one datagram per event, at the event's severity.
#[derive(Clone, Copy, Debug)]
pub struct SyslogWriter {
    severity: u8,
}

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(logger) = LOGGER.get() {
            logger.send(self.severity, buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogWriter;

    fn make_writer(&'a self) -> SyslogWriter {
        *self
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogWriter {
        SyslogWriter {
            severity: severity(meta.level()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facilities_are_pgbouncers_and_case_does_not_matter() {
        assert_eq!(facility_code("daemon"), Some(3));
        assert_eq!(facility_code("LOCAL3"), Some(19));
        assert_eq!(facility_code("kern"), None);
        assert!(facility_names().contains("local7"));
        assert_eq!(severity(&Level::WARN), 4);
    }
}
