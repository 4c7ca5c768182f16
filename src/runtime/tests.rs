//! The executor and reactor on their own: tasks, timers, wake-ups from another thread, and
//! sockets (a socketpair stands in for a client or a server).

use std::cell::RefCell;
use std::os::fd::{FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::executor::block_on;
use super::io::{read_either, sleep, spawn, timeout, Buf, Either, Stream};

fn run(main: impl std::future::Future<Output = ()> + 'static) {
    block_on(main, 64, Duration::ZERO).expect("executor starts");
}

fn pair() -> (Stream, Stream) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two new descriptors into `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (
        Stream::from_fd(a).expect("adopt a"),
        Stream::from_fd(b).expect("adopt b"),
    )
}

#[test]
fn spawned_tasks_run_and_timers_fire_in_deadline_order() {
    let order = Rc::new(RefCell::new(Vec::new()));
    let seen = order.clone();
    run(async move {
        for (ms, tag) in [(30u64, "c"), (10, "a"), (20, "b")] {
            let order = order.clone();
            spawn(async move {
                sleep(Duration::from_millis(ms)).await;
                order.borrow_mut().push(tag);
            });
        }
        sleep(Duration::from_millis(60)).await;
    });
    assert_eq!(*seen.borrow(), ["a", "b", "c"]);
}

#[test]
fn timeout_gives_up_and_a_dropped_sleep_leaves_no_timer_behind() {
    run(async {
        let started = Instant::now();
        let r = timeout(Duration::from_millis(20), sleep(Duration::from_secs(3600))).await;
        assert!(r.is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            timeout(Duration::from_secs(5), async { 7 }).await,
            Some(7),
            "a ready future wins"
        );
    });
}

/// A flag that another thread sets after a delay, waking the task waiting on it
/// ([`until_set`]): a wake-up from outside the shard.
type RemoteFlag = Arc<Mutex<(bool, Option<Waker>)>>;

fn set_later(after: Duration) -> (RemoteFlag, std::thread::JoinHandle<()>) {
    let flag: RemoteFlag = Arc::default();
    let remote = flag.clone();
    let setter = std::thread::spawn(move || {
        std::thread::sleep(after);
        let mut s = remote.lock().unwrap();
        s.0 = true;
        if let Some(w) = s.1.take() {
            w.wake();
        }
    });
    (flag, setter)
}

async fn until_set(flag: RemoteFlag) {
    std::future::poll_fn(|cx| {
        let mut s = flag.lock().unwrap();
        if s.0 {
            Poll::Ready(())
        } else {
            s.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
}

#[test]
fn a_wake_from_another_thread_ends_a_park() {
    let (flag, setter) = set_later(Duration::from_millis(50));
    let started = Instant::now();
    run(until_set(flag));
    setter.join().unwrap();
    // The shard parks with a one-hour timeout when it has no timers: only the eventfd
    // written by the other thread can have ended it this soon.
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The spin tests read a process-wide total: one at a time.
static SPIN_TESTS: Mutex<()> = Mutex::new(());

#[test]
fn a_shard_woken_only_by_its_timers_does_not_spin() {
    let _one = SPIN_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    super::spare::force_allowed(true);
    let spun_before = super::spare::spun_total();
    // Another thread ends the run after 60 ms; meanwhile the only thing that wakes the shard
    // is a 5 ms timer, after which it has no timer left and would spin until that remote
    // wake-up if timer wake-ups counted as work.
    let (flag, ender) = set_later(Duration::from_millis(60));
    block_on(
        async move {
            spawn(sleep(Duration::from_millis(5)));
            until_set(flag).await;
        },
        64,
        Duration::from_secs(2),
    )
    .expect("executor starts");
    ender.join().unwrap();
    super::spare::force_allowed(false);
    assert!(super::spare::spun_total() - spun_before < Duration::from_millis(20));
}

#[test]
fn a_spinning_shard_finds_socket_data_without_parking_and_counts_its_spin() {
    let _one = SPIN_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    super::spare::force_allowed(true);
    let spun_before = super::spare::spun_total();
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let (read_ping, ping_read) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        // The first message wakes a parked shard; the second comes 30 ms after the shard read
        // the first, while it spins (a shard woken by I/O spins, one woken by its own timers
        // does not).
        std::thread::sleep(Duration::from_millis(30));
        std::io::Write::write_all(&mut theirs, b"ping").unwrap();
        ping_read.recv().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        std::io::Write::write_all(&mut theirs, b"pong").unwrap();
        theirs
    });
    let got = Rc::new(RefCell::new(Vec::new()));
    let seen = got.clone();
    // A spin long enough to cover the writer's delay: the second read completes while spinning.
    block_on(
        async move {
            let mut a = Stream::from_fd(OwnedFd::from(ours)).expect("adopt");
            let mut buf = [0u8; 8];
            while seen.borrow().len() < 8 {
                let n = a.read(&mut buf).await.unwrap();
                seen.borrow_mut().extend_from_slice(&buf[..n]);
                if seen.borrow().as_slice() == b"ping" {
                    read_ping.send(()).unwrap();
                }
            }
        },
        64,
        Duration::from_secs(2),
    )
    .expect("executor starts");
    super::spare::force_allowed(false);
    drop(writer.join().unwrap());
    assert_eq!(*got.borrow(), b"pingpong");
    assert!(super::spare::spun_total() - spun_before >= Duration::from_millis(20));
}

#[test]
fn streams_carry_bytes_both_ways_and_report_end_of_stream() {
    run(async {
        let (mut a, mut b) = pair();
        a.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        b.write_all(b"back").await.unwrap();
        let n = a.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"back");
        drop(a);
        assert_eq!(b.read(&mut buf).await.unwrap(), 0, "end of stream");
    });
}

/// Nothing to read yet: gives up after a moment, dropping the pending read (its poll stays
/// armed).
async fn nothing_to_read(s: &mut Stream, buf: &mut [u8]) {
    assert!(timeout(Duration::from_millis(10), s.read(buf))
        .await
        .is_none());
}

/// A read dropped while pending loses nothing; and data and the end of stream that arrive
/// together (one poll completion reports both): a short read takes the data, and the end must
/// still be seen, though no later arrival fires the poll.
#[test]
fn a_dropped_read_and_the_end_of_stream_after_a_short_read_lose_nothing() {
    run(async {
        let (mut a, mut b) = pair();
        let mut buf = [0u8; 64];
        // Arms `a`'s read poll and leaves it not ready.
        nothing_to_read(&mut a, &mut buf).await;
        // Both arrive before the shard reaps a completion.
        b.write_all(b"last").await.unwrap();
        drop(b);
        let n = a.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"last");
        let end = timeout(Duration::from_secs(2), a.read(&mut buf)).await;
        assert_eq!(end.map(Result::unwrap), Some(0), "end of stream");
    });
}

#[test]
fn read_either_takes_whichever_side_has_data() {
    run(async {
        let (mut client, mut client_peer) = pair();
        let (mut server, mut server_peer) = pair();
        let (mut cbuf, mut sbuf) = (buf(), buf());
        server_peer.write_all(b"Z").await.unwrap();
        match read_either(&mut client, &mut cbuf, &mut server, &mut sbuf).await {
            Either::Second(Ok(1)) => assert_eq!(sbuf.data(), b"Z"),
            other => panic!("expected the server's byte, got {other:?}"),
        }
        client_peer.write_all(b"Q").await.unwrap();
        match read_either(&mut client, &mut cbuf, &mut server, &mut sbuf).await {
            Either::First(Ok(1)) => assert_eq!(cbuf.data(), b"Q"),
            other => panic!("expected the client's byte, got {other:?}"),
        }
    });
}

#[test]
fn a_write_larger_than_the_socket_buffer_waits_for_room() {
    const LEN: usize = 8 << 20;
    run(async {
        let (mut a, mut b) = pair();
        let reader = Rc::new(RefCell::new(0usize));
        let got = reader.clone();
        spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = b.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                *got.borrow_mut() += n;
            }
        });
        let data = vec![7u8; LEN];
        a.write_all(&data).await.unwrap();
        drop(a);
        while *reader.borrow() < LEN {
            sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(*reader.borrow(), LEN);
    });
}

#[test]
fn connect_to_a_closed_port_fails_with_an_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: nobody listens there now
    run(async move {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let r = super::io::connect(&addr.into(), Duration::from_secs(2), None).await;
        assert!(r.is_err(), "connected to a closed port");
    });
}

/// Connects to `addr` on the executor, says hello, and returns what the listener's side
/// (`accept`, on a thread of its own) read.
fn unix_round_trip(
    addr: socket2::SockAddr,
    accept: impl FnOnce() -> std::os::unix::net::UnixStream + Send + 'static,
) {
    let server = std::thread::spawn(move || {
        let mut conn = accept();
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut conn, &mut got).unwrap();
        std::io::Write::write_all(&mut conn, b"world").unwrap();
        got
    });
    run(async move {
        let mut s = super::io::connect(&addr, Duration::from_secs(2), None)
            .await
            .expect("connects to the unix socket");
        assert!(s.is_unix(), "a unix-socket connection knows it is one");
        s.set_nodelay(true).expect("a no-op on a unix socket");
        s.write_all(b"hello").await.unwrap();
        let mut reply = [0u8; 5];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"world");
    });
    assert_eq!(&server.join().unwrap(), b"hello");
}

#[test]
fn connect_reaches_a_unix_socket_in_the_file_system() {
    let dir = std::env::temp_dir().join(format!("pgring-rt-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(".s.PGSQL.5432");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let addr = socket2::SockAddr::unix(&path).unwrap();
    unix_round_trip(addr, move || listener.accept().unwrap().0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn connect_reaches_a_unix_socket_in_the_abstract_namespace() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("pgring-rt-{}/.s.PGSQL.5432", std::process::id());
    let std_addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&std_addr).unwrap();
    let addr = crate::server::ServerAddr::unix(&format!("@pgring-rt-{}", std::process::id()), 5432)
        .sock_addr()
        .unwrap();
    unix_round_trip(addr, move || listener.accept().unwrap().0);
}

#[test]
fn connect_to_a_missing_unix_socket_fails_at_once() {
    run(async {
        let addr = socket2::SockAddr::unix("/nonexistent-pgring-dir/.s.PGSQL.5432").unwrap();
        let started = Instant::now();
        let r = super::io::connect(&addr, Duration::from_secs(2), None).await;
        let e = r.expect_err("no such socket");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        assert!(started.elapsed() < Duration::from_secs(1));
    });
}

fn buf() -> Buf {
    Buf {
        bytes: vec![0; 1024],
        filled: 0,
    }
}

#[test]
fn buffers_a_burst_left_unused_are_given_back_and_a_steady_load_keeps_its_own() {
    let pool = super::io::BufPool::default();
    // A burst: 1000 buffers in use at once, then all returned.
    let burst: Vec<_> = (0..1000).map(|_| pool.take()).collect();
    burst.into_iter().for_each(|b| pool.give(b));
    assert_eq!(pool.free_count(), 1000);
    // First trim after the burst: none stayed unused during the burst itself
    // (the list was empty at its peak), so nothing goes yet.
    assert_eq!(pool.trim(), 0);
    // A steady load of 10 buffers in use: each later trim halves what it left alone.
    let mut freed = Vec::new();
    for _ in 0..12 {
        let steady: Vec<_> = (0..10).map(|_| pool.take()).collect();
        steady.into_iter().for_each(|b| pool.give(b));
        freed.push(pool.trim());
    }
    assert_eq!(freed[0], 495);
    assert!(pool.free_count() <= 16, "left {}", pool.free_count());
    assert!(pool.free_count() >= 10, "the steady load's buffers stay");
    let again: Vec<_> = (0..10).map(|_| pool.take()).collect();
    again.into_iter().for_each(|b| pool.give(b));
}

#[test]
fn a_task_woken_with_wake_next_runs_before_those_already_queued() {
    let order = Rc::new(RefCell::new(Vec::new()));
    let seen = order.clone();
    run(async move {
        // "handed" parks first and leaves its waker behind.
        let waker: Rc<RefCell<Option<Waker>>> = Rc::default();
        let (w, o) = (waker.clone(), order.clone());
        spawn(async move {
            let mut parked = false;
            std::future::poll_fn(|cx| {
                if parked {
                    return Poll::Ready(());
                }
                parked = true;
                *w.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            o.borrow_mut().push("handed");
        });
        sleep(Duration::from_millis(5)).await;
        // Three tasks queued in one go; the first hands "handed" its work.
        for tag in ["releaser", "queued 1", "queued 2"] {
            let (w, o) = (waker.clone(), order.clone());
            spawn(async move {
                o.borrow_mut().push(tag);
                if tag == "releaser" {
                    if let Some(w) = w.borrow_mut().take() {
                        super::io::wake_next(w);
                    }
                }
            });
        }
        sleep(Duration::from_millis(5)).await;
    });
    assert_eq!(
        *seen.borrow(),
        ["releaser", "handed", "queued 1", "queued 2"]
    );
}

#[test]
fn an_isolated_task_that_panics_ends_alone_and_its_state_is_dropped() {
    struct Guard(Rc<RefCell<Vec<&'static str>>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.borrow_mut().push("guard dropped");
        }
    }
    let log = Rc::new(RefCell::new(Vec::new()));
    let seen = log.clone();
    run(async move {
        let guard = Guard(log.clone());
        spawn(super::isolate::Isolated::new(async move {
            let _guard = guard;
            sleep(Duration::from_millis(5)).await;
            panic!("isolated test panic");
        }));
        let other = log.clone();
        spawn(super::isolate::Isolated::new(async move {
            sleep(Duration::from_millis(20)).await;
            other.borrow_mut().push("other finished");
        }));
        sleep(Duration::from_millis(40)).await;
    });
    assert_eq!(*seen.borrow(), ["guard dropped", "other finished"]);
}
