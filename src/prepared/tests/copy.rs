//! COPY FROM STDIN: the Syncs a server in copy-in ignores, and requests it would drop.

use super::*;

const COPY_IN_RESPONSE: &[u8] = b"G\0\0\0\x07\0\0\0";
const COPY_DONE: &[u8] = b"c\0\0\0\x04";

fn copy_data(row: &str) -> Vec<u8> {
    msg(b'd', row.as_bytes())
}

/// The client has started `COPY t FROM STDIN` as tokio-postgres and pgx do: Bind, Execute and
/// a Sync before knowing it is a COPY; the server asked for the data.
fn copying() -> Pair {
    let mut p = prepared("copy", "COPY t FROM STDIN");
    let (to_server, _) = p.client_sends(&cat(&[&bind(b"copy"), &execute(), SYNC]));
    assert_eq!(
        to_server,
        cat(&[&bind(&name_of("COPY t FROM STDIN")), &execute(), SYNC])
    );
    assert_eq!(p.state().pending, 1);
    let got = p.server_sends(&cat(&[BIND_COMPLETE, COPY_IN_RESPONSE]));
    assert_eq!(got, cat(&[BIND_COMPLETE, COPY_IN_RESPONSE]));
    assert_eq!(
        p.state().pending,
        0,
        "the Sync after Execute reaches a server in copy-in"
    );
    assert!(!p.may_release(), "the server is in the middle of a COPY");
    p
}

#[test]
fn a_copy_started_by_execute_owes_one_ready_for_query_after_copydone_and_sync() {
    let mut p = copying();
    p.client_sends(&cat(&[&copy_data("1\n"), &copy_data("2\n"), COPY_DONE]));
    let got = p.server_sends(&command_complete("COPY 2"));
    assert_eq!(got, command_complete("COPY 2"));
    assert!(
        !p.may_release(),
        "the COPY is not committed before its Sync: the server must not go to another client"
    );
    p.client_sends(SYNC);
    assert_eq!(p.state().pending, 1);
    assert_eq!(p.server_sends(READY_IDLE), READY_IDLE);
    assert!(p.may_release());
    // In step: the next exchange gets its own replies.
    p.client_sends(&cat(&[&bind(b"copy"), &execute(), SYNC]));
    assert_eq!(
        p.server_sends(&cat(&[BIND_COMPLETE, COPY_IN_RESPONSE])),
        cat(&[BIND_COMPLETE, COPY_IN_RESPONSE])
    );
}

#[test]
fn a_copy_the_server_fails_mid_data_ends_at_the_next_sync() {
    let mut p = copying();
    p.client_sends(&copy_data("oops\n"));
    let e = error("22P02", "invalid input syntax for type integer");
    assert_eq!(p.server_sends(&e), e);
    assert!(!p.may_release());
    // The client finishes its side; the server discards up to the Sync.
    p.client_sends(&cat(&[&copy_data("3\n"), COPY_DONE, SYNC]));
    assert_eq!(p.server_sends(READY_IDLE), READY_IDLE);
    assert!(p.may_release());
}

#[test]
fn copyfail_then_sync_ends_a_copy() {
    let mut p = copying();
    p.client_sends(&cat(&[&copy_data("1\n"), &msg(b'f', b"no\0"), SYNC]));
    let e = error("57014", "COPY from stdin failed: no");
    assert_eq!(
        p.server_sends(&cat(&[&e, READY_IDLE])),
        cat(&[&e, READY_IDLE])
    );
    assert!(p.may_release());
}

#[test]
fn a_sync_in_the_middle_of_the_data_is_ignored_when_the_copy_ends_well() {
    let mut p = copying();
    p.client_sends(&cat(&[
        &copy_data("1\n"),
        SYNC,
        FLUSH,
        &copy_data("2\n"),
        COPY_DONE,
        SYNC,
    ]));
    assert_eq!(
        p.state().pending,
        2,
        "owed until the COPY's result says otherwise"
    );
    p.server_sends(&command_complete("COPY 2"));
    assert_eq!(p.state().pending, 1);
    assert_eq!(p.server_sends(READY_IDLE), READY_IDLE);
    assert!(p.may_release());
}

#[test]
fn a_whole_copy_pipelined_before_the_server_asks_for_data_ends_at_its_last_sync() {
    // Data, a Sync amid it (ignored in copy-in), CopyDone and the Sync that ends the exchange,
    // all sent before the CopyInResponse: the server comes to rest at that Sync's reply (it
    // used to stay linked, the exchange taken for unsynced, the ignored Sync for owed).
    for data in [
        cat(&[COPY_DONE, SYNC]),
        cat(&[&copy_data("1\n"), SYNC, &copy_data("2\n"), COPY_DONE, SYNC]),
    ] {
        let mut p = prepared("copy", "COPY t FROM STDIN");
        p.client_sends(&cat(&[&bind(b"copy"), &execute(), &data]));
        p.server_sends(&cat(&[BIND_COMPLETE, COPY_IN_RESPONSE]));
        assert!(!p.may_release());
        p.server_sends(&command_complete("COPY 2"));
        assert_eq!(p.state().pending, 1);
        assert_eq!(p.server_sends(READY_IDLE), READY_IDLE);
        assert!(p.may_release(), "{:?}", p.state());
    }
}

#[test]
fn after_a_server_error_a_sync_sent_mid_data_stays_owed_and_the_server_is_never_released() {
    // Whether PostgreSQL read this Sync before or after its error cannot be told: if after,
    // it answers it. Counting it keeps a ReadyForQuery from reaching another client.
    let mut p = copying();
    p.client_sends(&cat(&[&copy_data("oops\n"), SYNC, COPY_DONE, SYNC]));
    p.server_sends(&error("22P02", "bad"));
    p.server_sends(READY_IDLE);
    assert!(!p.may_release());
    assert_eq!(p.state().pending, 1);
}

#[test]
fn a_simple_query_copy_needs_no_sync() {
    let mut p = Pair::new(200);
    p.client_sends(&query("COPY t FROM STDIN"));
    p.server_sends(COPY_IN_RESPONSE);
    p.client_sends(&cat(&[&copy_data("1\n"), COPY_DONE]));
    assert!(!p.may_release());
    let got = p.server_sends(&cat(&[&command_complete("COPY 1"), READY_IDLE]));
    assert_eq!(got, cat(&[&command_complete("COPY 1"), READY_IDLE]));
    assert!(p.may_release());
}

#[test]
fn a_copy_statement_that_fails_before_copy_in_counts_its_sync() {
    let mut p = Pair::new(200);
    p.client_sends(&cat(&[
        &parse("", "COPY nosuch FROM STDIN"),
        &bind(b""),
        &execute(),
        SYNC,
    ]));
    let e = error("42P01", "relation \"nosuch\" does not exist");
    p.server_sends(&e);
    assert!(!p.may_release());
    assert_eq!(p.server_sends(READY_IDLE), READY_IDLE);
    assert!(p.may_release());
}

#[test]
fn a_request_where_the_server_wants_copy_data_ends_the_client() {
    // PostgreSQL would drop it with an error pgring cannot match to a request; pgring closes
    // the client (08P01) and, the link being busy, the server with it.
    let mut p = copying();
    let e = p
        .try_client_sends(&cat(&[&copy_data("1\n"), &parse("x", "SELECT 2")]))
        .expect_err("Parse during COPY");
    assert!(e.to_string().contains("during COPY"), "{e}");
    // Pipelined behind the COPY before the server asked for data: found when it asks.
    let mut p = Pair::new(200);
    p.client_sends(&cat(&[
        &query("COPY t FROM STDIN"),
        &parse("x", "SELECT 2"),
    ]));
    let e = p
        .try_server_sends(COPY_IN_RESPONSE)
        .expect_err("Parse pipelined behind COPY");
    assert!(e.to_string().contains("during COPY"), "{e}");
}

#[test]
fn requests_pipelined_behind_a_copydone_are_not_taken_for_a_broken_copy() {
    // A COPY by Query, then one by Execute, each sent whole with more requests behind it
    // before the server asks for its data: those after the CopyDone reach a server that has
    // left copy-in (they used to end the client with 08P01), and the link comes to rest.
    for max in [0, 200] {
        let mut p = Pair::new(max);
        p.client_sends(&cat(&[
            &query("COPY t FROM STDIN"),
            &copy_data("1\n"),
            SYNC,
            COPY_DONE,
            &query("SELECT 1"),
            &parse("", "COPY t FROM STDIN"),
            &bind(b""),
            &execute(),
            &copy_data("2\n"),
            COPY_DONE,
            &execute(),
            SYNC,
        ]));
        for reply in [
            cat(&[COPY_IN_RESPONSE, &command_complete("COPY 1"), READY_IDLE]),
            cat(&[&command_complete("SELECT 1"), READY_IDLE]),
            cat(&[PARSE_COMPLETE, BIND_COMPLETE, COPY_IN_RESPONSE]),
            command_complete("COPY 1"),
        ] {
            let r = p.try_server_sends(&reply);
            assert!(r.is_ok(), "max {max}: {r:?}");
        }
        let e = error("55000", "portal \"\" cannot be run");
        p.server_sends(&cat(&[&e, READY_IDLE]));
        assert!(p.may_release(), "max {max}: {:?}", p.state());
    }
}

#[test]
fn a_local_reply_behind_a_sync_amid_copy_data_comes_after_the_copy() {
    // The Sync amid the data is ignored by the server; the CloseComplete pgring owes for the
    // Close behind the COPY is due as soon as the COPY ends (it used to wait behind the
    // dropped Sync, and the next reply went unmatched).
    let mut p = prepared("copy", "COPY t FROM STDIN");
    p.client_sends(&cat(&[&bind(b"copy"), &execute(), &copy_data("1\n"), SYNC]));
    p.server_sends(&cat(&[BIND_COMPLETE, COPY_IN_RESPONSE]));
    p.client_sends(&cat(&[COPY_DONE, &close_s(b"copy"), &bind(b"nope"), SYNC]));
    let got = p.server_sends(&command_complete("COPY 1"));
    assert_eq!(got, cat(&[&command_complete("COPY 1"), CLOSE_COMPLETE]));
    let e = no_such("nope");
    assert_eq!(
        p.server_sends(&cat(&[&e, READY_IDLE])),
        cat(&[&e, READY_IDLE])
    );
    assert!(p.may_release(), "{:?}", p.state());
}
