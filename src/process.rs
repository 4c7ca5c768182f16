//! The process around the shards, as PgBouncer runs it: `-d` (daemon), the pidfile, `-u` /
//! `user` (drop root after binding), and the logfile reopened on SIGHUP.
//!
//! Everything here runs on the main thread, either before any other thread exists (daemon,
//! privilege drop: `fork` and `setuid` are only sound then) or from the signal loop (logfile
//! reopen). Nothing here is on a shard's path except writing a log line to the logfile.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

/// Detaches from the terminal like PgBouncer's `go_daemon`: fork (the parent exits), new
/// session, fork again (never a session leader, so never a controlling terminal), stdio to
/// /dev/null. The working directory is kept: config paths were already made absolute, and
/// RELOAD re-reads the config path as given.
///
/// Must be called while the process has a single thread.
pub fn daemonize() -> io::Result<()> {
    fork_and_exit_parent()?;
    // SAFETY: setsid has no memory-safety preconditions.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    fork_and_exit_parent()?;
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors from an fd we own.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn fork_and_exit_parent() -> io::Result<()> {
    // SAFETY: the caller guarantees a single-threaded process, so the child is a full copy.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(()),
        // SAFETY: _exit skips atexit handlers and buffered output the child now owns.
        _ => unsafe { libc::_exit(0) },
    }
}

/// Switches to `user` (its uid, primary gid and supplementary groups), as PgBouncer's
/// `change_user`. Already being that user is fine; anything else without root is an error.
pub fn drop_privileges(user: &str) -> io::Result<()> {
    let (uid, gid) = user_ids(user)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == uid {
        return Ok(());
    }
    let name = std::ffi::CString::new(user).map_err(|_| invalid("user name contains NUL"))?;
    // SAFETY: plain syscalls with valid arguments; order matters: groups before the uid
    // change, since an unprivileged process may no longer set them.
    unsafe {
        if libc::initgroups(name.as_ptr(), gid) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The uid and primary gid of `user` (a name, or a numeric uid).
fn user_ids(user: &str) -> io::Result<(u32, u32)> {
    let name = std::ffi::CString::new(user).map_err(|_| invalid("user name contains NUL"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain data; getpwnam_r fills it with pointers into `buf`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes given.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if found.is_null() {
        return Err(invalid(&format!("no such user: {user}")));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

/// The name of the OS user `uid` (for `peer` authentication), if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain data; getpwuid_r fills it with pointers into `buf`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes given.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    name.to_str().ok().map(str::to_owned)
}

/// The gid of `group` (a name, or a number), for `unix_socket_group`.
pub fn group_id(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group).map_err(|_| invalid("group name contains NUL"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: group is plain data; getgrnam_r fills it with pointers into `buf`.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes given.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if found.is_null() {
        return Err(invalid(&format!("no such group: {group}")));
    }
    Ok(grp.gr_gid)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_owned())
}

/// Refuses to start when `path` holds the pid of a live process (another pgring or PgBouncer
/// on the same config); removes it when that process is gone.
pub fn check_pidfile(path: &Path) -> io::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    if let Ok(pid) = text.trim().parse::<libc::pid_t>() {
        if pid > 0 && process_alive(pid) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "pidfile {} names running process {pid}: is another pooler running?",
                    path.display()
                ),
            ));
        }
    }
    std::fs::remove_file(path)
}

fn process_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Writes this process's id to `path` (then removed by [`remove_pidfile`] at exit).
pub fn write_pidfile(path: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    writeln!(file, "{}", std::process::id())
}

/// Removes the pidfile at exit; a failure is only worth a warning.
pub fn remove_pidfile(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove the pidfile");
    }
}

/// The logfile, shared by every thread's log lines and reopened on SIGHUP.
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

static LOGFILE: OnceLock<LogFile> = OnceLock::new();

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Opens the logfile (appending, as PgBouncer) and returns the writer for tracing.
pub fn open_logfile(path: &Path) -> io::Result<LogWriter> {
    let file = open_append(path)?;
    let _ = LOGFILE.set(LogFile {
        path: path.to_owned(),
        file: Mutex::new(file),
    });
    Ok(LogWriter)
}

/// Reopens the logfile at its path, so that logrotate's rename takes effect (SIGHUP).
pub fn reopen_logfile() {
    let Some(log) = LOGFILE.get() else {
        return;
    };
    match open_append(&log.path) {
        Ok(file) => *log.file.lock().unwrap_or_else(|e| e.into_inner()) = file,
        Err(e) => tracing::warn!(path = %log.path.display(), error = %e, "cannot reopen logfile"),
    }
}

/// tracing's writer for the logfile: each event is one `write` under the file's lock.
#[derive(Clone, Copy, Debug)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match LOGFILE.get() {
            Some(log) => log
                .file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_of_a_live_process_refuses_and_a_stale_one_is_replaced() {
        let dir = std::env::temp_dir().join(format!("pgring-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("p.pid");
        std::fs::write(&path, format!("{}\n", std::process::id())).expect("write");
        let err = check_pidfile(&path).expect_err("we are alive");
        assert!(err.to_string().contains("names running process"), "{err}");
        // pid_max is at most 2^22 on Linux, so this one cannot exist.
        std::fs::write(&path, "99999999\n").expect("write");
        check_pidfile(&path).expect("stale pidfile is removed");
        write_pidfile(&path).expect("written");
        let pid: u32 = std::fs::read_to_string(&path)
            .expect("read")
            .trim()
            .parse()
            .expect("a pid");
        assert_eq!(pid, std::process::id());
        remove_pidfile(&path);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn user_and_group_lookup() {
        assert_eq!(user_ids("root").expect("root exists"), (0, 0));
        assert!(user_ids("no-such-user-pgring").is_err());
        assert_eq!(group_id("root").expect("root group"), 0);
        assert_eq!(group_id("1234").expect("numeric"), 1234);
        assert!(group_id("no-such-group-pgring").is_err());
    }
}
