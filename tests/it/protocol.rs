//! Bytes that are not a well-behaved client: malformed and oversized frames get an ErrorResponse
//! 08P01 and close that one connection, while everyone else carries on. Also the encryption
//! requests that every libpq client sends first.

use crate::common::wire::{self, Wire};
use crate::common::{self, config_for, value, Pgring};

const LOGIN: [(&str, &str); 2] = [("user", "trust_user"), ("database", "app")];

/// A bystander that must keep working after someone else's broken connection.
async fn assert_bystander_works(bystander: &tokio_postgres::Client, port: u16) {
    assert_eq!(
        value(bystander, "SELECT 'still here'").await.as_deref(),
        Some("still here")
    );
    let newcomer = common::connect(port, "app", "trust_user", "").await;
    assert_eq!(value(&newcomer, "SELECT 1").await.as_deref(), Some("1"));
}

/// After login, a message whose length field (2) is shorter than the length field itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_length_below_4_is_08p01_and_closes_only_that_client() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, ""));
    let bystander = common::connect(pgring.port, "app", "trust_user", "").await;
    let (mut bad, _) = Wire::login(pgring.port, &LOGIN).await;
    assert_eq!(bad.query_value("SELECT 1").await.as_deref(), Some("1"));
    bad.send(b"Q\x00\x00\x00\x02").await;
    let error = bad.expect_error_and_close().await;
    assert_eq!(error.code(), "08P01", "{error}");
    assert_bystander_works(&bystander, pgring.port).await;
}

/// An HTTP request where a startup packet belongs ("GET " read as a length is ~1.2 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_startup_is_08p01_and_closes_only_that_client() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, ""));
    let bystander = common::connect(pgring.port, "app", "trust_user", "").await;
    let mut bad = Wire::connect(pgring.port).await;
    bad.send_lossy(b"GET / HTTP/1.1\r\nHost: pgring\r\n\r\n")
        .await;
    let error = bad.expect_error_and_close().await;
    assert_eq!(error.code(), "08P01", "{error}");
    assert_bystander_works(&bystander, pgring.port).await;
}

/// Startup packets too short to hold a protocol version, and one that ends mid-parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_startup_packets_are_08p01() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, ""));
    let mut unterminated = wire::startup(&LOGIN);
    unterminated.truncate(unterminated.len() - 2); // drop the last NUL and the list's end...
    let len = (unterminated.len() as u32).to_be_bytes();
    unterminated[..4].copy_from_slice(&len); // ...and make the length say so
    for (what, packet) in [
        ("length 2", vec![0, 0, 0, 2]),
        ("length 4, no version", vec![0, 0, 0, 4]),
        ("unterminated parameter", unterminated),
    ] {
        eprintln!("sending a startup packet with {what}");
        let mut bad = Wire::connect(pgring.port).await;
        bad.send_lossy(&packet).await;
        let error = bad.expect_error_and_close().await;
        assert_eq!(error.code(), "08P01", "{what}: {error}");
    }
    let client = common::connect(pgring.port, "app", "trust_user", "").await;
    assert_eq!(value(&client, "SELECT 1").await.as_deref(), Some("1"));
}

/// max_packet_size: a big query under the limit passes; a frame announcing more than the limit is
/// refused from its header, before its body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_is_08p01_and_closes_only_that_client() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, "max_packet_size = 100000"));
    let bystander = common::connect(pgring.port, "app", "trust_user", "").await;
    let (mut bad, _) = Wire::login(pgring.port, &LOGIN).await;
    let big = format!("SELECT length('{}')", "x".repeat(50_000));
    assert_eq!(
        bad.query_value(&big).await.as_deref(),
        Some("50000"),
        "a 50 kB query is under the limit"
    );
    let mut frame = b"Q".to_vec();
    frame.extend_from_slice(&200_000u32.to_be_bytes());
    frame.extend_from_slice(b"SELECT 1");
    bad.send_lossy(&frame).await;
    let error = bad.expect_error_and_close().await;
    assert_eq!(error.code(), "08P01", "{error}");
    assert_bystander_works(&bystander, pgring.port).await;
}

/// libpq asks for TLS (and GSS encryption) first; the answer is 'N' and the login goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_declined_with_n() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, ""));
    for (what, code) in [("SSLRequest", 80_877_103u32), ("GSSENCRequest", 80_877_104)] {
        let mut client = Wire::connect(pgring.port).await;
        let mut request = 8u32.to_be_bytes().to_vec();
        request.extend_from_slice(&code.to_be_bytes());
        client.send(&request).await;
        assert_eq!(client.recv_byte().await, Some(b'N'), "{what}");
        client.send(&wire::startup(&LOGIN)).await;
        client
            .finish_login()
            .await
            .unwrap_or_else(|e| panic!("login after {what}: {e}"));
        assert_eq!(client.query_value("SELECT 1").await.as_deref(), Some("1"));
    }
}

/// Before it has authenticated, a client cannot make pgring buffer a huge message: a password
/// message announcing 100 MB (max_packet_size is 2 GB by default) is refused at once with 08P01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_password_message_before_auth_is_08p01() {
    let pgring = Pgring::start(&config_for("transaction", 2, 2, "auth_type = \"md5\""));
    let mut client = Wire::connect(pgring.port).await;
    client
        .send(&wire::startup(&[("user", "md5_user"), ("database", "app")]))
        .await;
    let challenge = client.recv().await.expect("an authentication request");
    assert_eq!(challenge.tag, b'R', "md5 challenge expected first");
    let mut frame = b"p".to_vec();
    frame.extend_from_slice(&100_000_000u32.to_be_bytes());
    frame.extend_from_slice(b"md5");
    client.send_lossy(&frame).await;
    let error = client.expect_error_and_close().await;
    assert_eq!(error.code(), "08P01", "{error}");
}
