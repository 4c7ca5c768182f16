//! Pipelines: requests behind a failed request (PostgreSQL skips them to the next Sync),
//! evictions and undos in flight, a DEALLOCATE ALL / DISCARD ALL with statements behind it.

use super::*;

#[test]
fn requests_that_arrive_after_the_server_failed_their_exchange_are_skipped_like_postgres() {
    // A pipelining driver (psycopg's pipeline mode) sends an exchange in several writes: the
    // server's error for the first part can arrive before the rest is read. PostgreSQL skips
    // the rest up to the Sync, so the Parse in it never prepares anything on the server.
    let mut p = Pair::new(200);
    let (to_server, _) =
        p.client_sends(&cat(&[&parse("a", "SELECT 1/0"), &bind(b"a"), &execute()]));
    assert_eq!(
        to_server,
        cat(&[
            &parse_srv("SELECT 1/0"),
            &bind(&name_of("SELECT 1/0")),
            &execute()
        ])
    );
    let e = error("22012", "division by zero");
    let got = p.server_sends(&cat(&[PARSE_COMPLETE, BIND_COMPLETE, &e]));
    assert_eq!(got, cat(&[PARSE_COMPLETE, BIND_COMPLETE, &e]));
    let (to_server, to_client) = p.client_sends(&cat(&[
        &parse("c", "SELECT 3"),
        &bind(b"c"),
        &execute(),
        SYNC,
    ]));
    // Passed through untouched, for the server to skip.
    assert_eq!(
        to_server,
        cat(&[&parse("c", "SELECT 3"), &bind(b"c"), &execute(), SYNC])
    );
    assert!(
        to_client.is_empty(),
        "PostgreSQL sends nothing for skipped messages"
    );
    assert_eq!(p.server_sends(READY_IDLE), READY_IDLE);
    assert!(p.may_release());
    // The server never prepared "SELECT 3": the client's next Parse of it must reach it.
    let (to_server, to_client) = p.client_sends(&cat(&[
        &parse("c", "SELECT 3"),
        &bind(b"c"),
        &execute(),
        SYNC,
    ]));
    assert_eq!(
        to_server,
        cat(&[
            &parse_srv("SELECT 3"),
            &bind(&name_of("SELECT 3")),
            &execute(),
            SYNC
        ])
    );
    assert!(to_client.is_empty());
    let got = p.server_sends(&cat(&[
        PARSE_COMPLETE,
        BIND_COMPLETE,
        &command_complete("SELECT 1"),
        READY_IDLE,
    ]));
    assert_eq!(
        got,
        cat(&[
            PARSE_COMPLETE,
            BIND_COMPLETE,
            &command_complete("SELECT 1"),
            READY_IDLE
        ])
    );
}

#[test]
fn a_full_server_set_is_left_alone_while_the_server_skips_to_sync() {
    // One statement per server: the failed exchange evicted "SELECT 1" to make room; what
    // follows before the Sync evicts and injects nothing (the server would ignore it).
    let mut p = Pair::new(1);
    p.client_sends(&cat(&[&parse("one", "SELECT 1"), SYNC]));
    p.server_sends(&cat(&[PARSE_COMPLETE, READY_IDLE]));
    p.client_sends(&cat(&[&parse("a", "SELECT 1/0"), &bind(b"a"), &execute()]));
    let e = error("22012", "division by zero");
    let got = p.server_sends(&cat(&[CLOSE_COMPLETE, PARSE_COMPLETE, BIND_COMPLETE, &e]));
    assert_eq!(got, cat(&[PARSE_COMPLETE, BIND_COMPLETE, &e]));
    let batch = cat(&[&parse("c", "SELECT 3"), &bind(b"one"), &execute(), SYNC]);
    let (to_server, to_client) = p.client_sends(&batch);
    assert_eq!(to_server, batch);
    assert!(to_client.is_empty());
    assert_eq!(p.server_sends(READY_IDLE), READY_IDLE);
    assert!(p.may_release());
    // In step: "one" was evicted, so binding it prepares it again (evicting "SELECT 1/0").
    let (to_server, _) = p.client_sends(&cat(&[&bind(b"one"), &execute(), SYNC]));
    assert_eq!(
        to_server,
        cat(&[
            &close_s(&name_of("SELECT 1/0")),
            &parse_srv("SELECT 1"),
            &bind(&name_of("SELECT 1")),
            &execute(),
            SYNC
        ])
    );
}

#[test]
fn a_later_exchange_waits_for_an_earlier_ones_parse_of_its_statement() {
    // Found by the relay fuzz target (one statement per server): the second exchange's Bind of
    // s1 was renamed for a set in which the first exchange's Parse of s1 had run. That Parse
    // was skipped after an error, so the Bind must fail as it would without pgring (s1 was
    // never prepared), not find a statement pgring believed there. (The second exchange's
    // Parse waits too: it would evict "SELECT 1".)
    let mut p = Pair::new(1);
    let (to_server, _) = p.client_sends(&cat(&[
        &bind(b"nope"),
        &parse("s1", "SELECT 1"),
        SYNC,
        &parse("s2", "SELECT 2"),
        &bind(b"s1"),
        SYNC,
    ]));
    assert_eq!(
        to_server,
        cat(&[&bind(b"nope"), &parse_srv("SELECT 1"), SYNC]),
        "the second exchange waits for the first one's replies"
    );
    let e = no_such("nope");
    assert_eq!(
        p.server_sends(&cat(&[&e, READY_IDLE])),
        cat(&[&e, READY_IDLE])
    );
    // s1's Parse was skipped: the Bind goes as the client sent it, for PostgreSQL to refuse,
    // and the set being empty, "SELECT 2" evicts nothing.
    let (to_server, _) = p.client_sends(&[]);
    assert_eq!(
        to_server,
        cat(&[&parse_srv("SELECT 2"), &bind(b"s1"), SYNC])
    );
    let e = no_such("s1");
    assert_eq!(
        p.server_sends(&cat(&[PARSE_COMPLETE, &e, READY_IDLE])),
        cat(&[PARSE_COMPLETE, &e, READY_IDLE])
    );
    assert!(p.may_release());
    // The server has "SELECT 2" only: preparing it under a new name is answered locally.
    let (to_server, to_client) = p.client_sends(&cat(&[&parse("s3", "SELECT 2"), SYNC]));
    assert_eq!(to_server, SYNC);
    assert_eq!(to_client, PARSE_COMPLETE);
}

#[test]
fn what_depends_on_the_server_set_waits_for_a_pipelined_deallocate_all() {
    // Found by the relay fuzz target. Whether DEALLOCATE ALL / DISCARD ALL empties the
    // server's set is known only at its reply (it fails in an aborted transaction, DISCARD ALL
    // in any transaction block), so a Parse, Bind or Describe behind it waits for that reply.
    let mut p = prepared("one", "SELECT 1");
    let batch = cat(&[
        &query("DISCARD ALL"),
        &parse("two", "SELECT 1"),
        &bind(b"two"),
        &execute(),
        SYNC,
    ]);
    let (to_server, to_client) = p.client_sends(&batch);
    assert_eq!(to_server, query("DISCARD ALL"));
    assert!(to_client.is_empty());
    let done = cat(&[&command_complete("DISCARD ALL"), READY_IDLE]);
    assert_eq!(p.server_sends(&done), done);
    // The set is empty now: the rest goes out, preparing "SELECT 1" again.
    let (to_server, _) = p.client_sends(&[]);
    assert_eq!(
        to_server,
        cat(&[
            &parse_srv("SELECT 1"),
            &bind(&name_of("SELECT 1")),
            &execute(),
            SYNC
        ])
    );
    // "one" went with the DISCARD ALL.
    p.server_sends(&cat(&[
        PARSE_COMPLETE,
        BIND_COMPLETE,
        &command_complete("SELECT 1"),
        READY_IDLE,
    ]));
    let (to_server, _) = p.client_sends(&cat(&[&bind(b"one"), SYNC]));
    assert_eq!(to_server, cat(&[&bind(b"one"), SYNC]));
}

#[test]
fn a_deallocate_all_that_fails_leaves_the_server_set_as_it_was() {
    let mut p = prepared("one", "SELECT 1");
    let (to_server, _) = p.client_sends(&cat(&[
        &query("DEALLOCATE ALL"),
        &parse("two", "SELECT 1"),
        SYNC,
    ]));
    assert_eq!(to_server, query("DEALLOCATE ALL"));
    p.server_sends(&cat(&[
        &error("25P02", "current transaction is aborted"),
        b"Z\0\0\0\x05E",
    ]));
    // The server still has "SELECT 1", but the block has failed: PostgreSQL refuses the Parse,
    // so its text goes to the server under the throwaway name, and the refusal is the client's.
    let (to_server, to_client) = p.client_sends(&[]);
    assert_eq!(
        to_server,
        cat(&[
            &parse("PGRING_PARSE_PROBE", "SELECT 1"),
            &close_s(b"PGRING_PARSE_PROBE"),
            SYNC,
        ])
    );
    assert!(to_client.is_empty());
    let failed = error("25P02", "current transaction is aborted");
    let to_client = p.server_sends(&cat(&[&failed, b"Z\0\0\0\x05E"]));
    assert_eq!(to_client, cat(&[&failed, b"Z\0\0\0\x05E"]));
    // "two" was never prepared; "one" still means its statement, answered locally at rest.
    let (to_server, _) = p.client_sends(&cat(&[&bind(b"two"), SYNC]));
    assert_eq!(to_server, cat(&[&bind(b"two"), SYNC]));
    p.server_sends(&cat(&[&failed, b"Z\0\0\0\x05E"]));
}

#[test]
fn in_a_failed_block_a_parse_of_a_statement_the_server_has_goes_to_postgres() {
    let mut p = prepared("one", "ROLLBACK");
    p.client_sends(&query("SELECT 1/0"));
    p.server_sends(&cat(&[
        &error("22012", "division by zero"),
        b"Z\0\0\0\x05E",
    ]));
    // A ROLLBACK is let through in a failed block: PostgreSQL's ParseComplete is the client's,
    // the probe's CloseComplete is swallowed.
    let (to_server, to_client) = p.client_sends(&cat(&[&parse("two", "ROLLBACK"), SYNC]));
    assert!(to_client.is_empty());
    assert_eq!(
        to_server,
        cat(&[
            &parse("PGRING_PARSE_PROBE", "ROLLBACK"),
            &close_s(b"PGRING_PARSE_PROBE"),
            SYNC,
        ])
    );
    let to_client = p.server_sends(&cat(&[PARSE_COMPLETE, CLOSE_COMPLETE, b"Z\0\0\0\x05E"]));
    assert_eq!(to_client, cat(&[PARSE_COMPLETE, b"Z\0\0\0\x05E"]));
    // In an open (not failed) block, and at rest, it is answered locally again.
    p.client_sends(&query("ROLLBACK"));
    p.server_sends(&cat(&[&command_complete("ROLLBACK"), READY_IDLE]));
    let (to_server, to_client) = p.client_sends(&cat(&[&parse("three", "ROLLBACK"), SYNC]));
    assert_eq!(to_server, SYNC);
    assert_eq!(to_client, PARSE_COMPLETE);
}

#[test]
fn an_eviction_the_server_skipped_is_seen_by_the_next_pipelined_exchange() {
    // One statement per server, "one" prepared. The first exchange fails before its eviction
    // of "SELECT 1" runs, so the server keeps it; the second exchange, already sent, binds
    // "one". It waits for the first exchange's replies and then finds "SELECT 1" there (it
    // used to prepare it again: 42P05 from PostgreSQL).
    let mut p = prepared_with_max(1, "one", "SELECT 1");
    let (to_server, _) = p.client_sends(&cat(&[
        &bind(b"nope"),
        &parse("a", "SELECT 2"),
        SYNC,
        &bind(b"one"),
        &execute(),
        SYNC,
    ]));
    assert_eq!(
        to_server,
        cat(&[
            &bind(b"nope"),
            &close_s(&name_of("SELECT 1")),
            &parse_srv("SELECT 2"),
            SYNC,
        ])
    );
    let e = no_such("nope");
    assert_eq!(
        p.server_sends(&cat(&[&e, READY_IDLE])),
        cat(&[&e, READY_IDLE])
    );
    let (to_server, _) = p.client_sends(&[]);
    assert_eq!(
        to_server,
        cat(&[&bind(&name_of("SELECT 1")), &execute(), SYNC])
    );
}

#[test]
fn a_skipped_exchange_is_undone_newest_first() {
    // One statement per server, "one" prepared. In one exchange, after a failing Bind: a
    // Parse evicts "SELECT 1" for "SELECT 2", then a Bind of "one" evicts "SELECT 2" for
    // "SELECT 1" again. The server skips all of it and still has "SELECT 1" only; undone
    // oldest first, pgring believed it had "SELECT 2" only.
    let mut p = prepared_with_max(1, "one", "SELECT 1");
    let (to_server, _) = p.client_sends(&cat(&[
        &bind(b"nope"),
        &parse("a", "SELECT 2"),
        &bind(b"one"),
        SYNC,
    ]));
    assert_eq!(
        to_server,
        cat(&[
            &bind(b"nope"),
            &close_s(&name_of("SELECT 1")),
            &parse_srv("SELECT 2"),
            &close_s(&name_of("SELECT 2")),
            &parse_srv("SELECT 1"),
            &bind(&name_of("SELECT 1")),
            SYNC,
        ])
    );
    let e = no_such("nope");
    p.server_sends(&cat(&[&e, READY_IDLE]));
    assert!(p.may_release());
    let (to_server, _) = p.client_sends(&cat(&[&bind(b"one"), &execute(), SYNC]));
    assert_eq!(
        to_server,
        cat(&[&bind(&name_of("SELECT 1")), &execute(), SYNC])
    );
}

#[test]
fn a_query_the_server_skips_after_an_error_owes_no_ready_for_query() {
    // PostgreSQL skips a simple Query sent inside an extended exchange that has failed, up
    // to the Sync: one ReadyForQuery comes, not two. Both when the Query was sent before the
    // error arrived and after it.
    let mut p = Pair::new(200);
    let batch = cat(&[&bind(b"nope"), &query("SELECT 1"), SYNC]);
    assert_eq!(p.client_sends(&batch).0, batch);
    let e = no_such("nope");
    assert_eq!(
        p.server_sends(&cat(&[&e, READY_IDLE])),
        cat(&[&e, READY_IDLE])
    );
    assert!(p.may_release(), "{:?}", p.state());

    let mut p = Pair::new(200);
    p.client_sends(&cat(&[&bind(b"nope"), &query("DEALLOCATE ALL")]));
    p.server_sends(&e);
    assert!(!p.may_release(), "the server waits for a Sync");
    let rest = cat(&[&query("SELECT 1"), SYNC]);
    assert_eq!(p.client_sends(&rest).0, rest);
    p.server_sends(READY_IDLE);
    assert!(p.may_release(), "{:?}", p.state());
}

#[test]
fn an_eviction_waits_for_an_earlier_exchanges_change_of_its_victim() {
    // One statement per server. The first exchange's Parse of "SELECT 1" and the second's
    // eviction of it for "SELECT 2" are both skipped after errors. Undone, the eviction would
    // bring back a statement the server never had (then a Bind of it: 26000). The second
    // exchange's Parse waits for the first one's replies instead, and then needs no eviction.
    let mut p = Pair::new(1);
    let (to_server, _) = p.client_sends(&cat(&[
        &bind(b"nope"),
        &parse("a", "SELECT 1"),
        SYNC,
        &bind(b"nope"),
        &parse("b", "SELECT 2"),
        SYNC,
    ]));
    assert_eq!(
        to_server,
        cat(&[&bind(b"nope"), &parse_srv("SELECT 1"), SYNC, &bind(b"nope")])
    );
    let e = no_such("nope");
    p.server_sends(&cat(&[&e, READY_IDLE]));
    let (to_server, _) = p.client_sends(&[]);
    assert_eq!(to_server, cat(&[&parse_srv("SELECT 2"), SYNC]));
    p.server_sends(&cat(&[&e, READY_IDLE]));
    assert!(p.may_release());
    // The server has nothing: "SELECT 1" must be prepared for c.
    let (to_server, _) = p.client_sends(&cat(&[&parse("c", "SELECT 1"), SYNC]));
    assert_eq!(to_server, cat(&[&parse_srv("SELECT 1"), SYNC]));
}
