//! RFC vectors, both roles against each other, and mutated peer messages.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// RFC 7677 section 3, the SCRAM-SHA-256 example exchange.
mod rfc7677 {
    pub const PASSWORD: &str = "pencil";
    pub const USER: &str = "user";
    pub const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    pub const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    pub const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    pub const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    pub const SERVER_FIRST: &[u8] =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    pub const CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    pub const SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
}

/// Verifiers produced by PostgreSQL 15 (`CREATE ROLE ... PASSWORD` with
/// `password_encryption = 'scram-sha-256'`), read back from `pg_authid`.
const PG_ALICE_PENCIL: &str = "SCRAM-SHA-256$4096:8HA+cfqaJxBptOk0/T+2NA==$z3uUF1fCLGDlN3wU0gJVzmngMzc88RvUWEGLMMlGzOc=:vGGpFsGCpZkCRP0YCc+lsc1rfTM61sVrbA5IrgkJB/k=";
const PG_BOB_CORRECT_HORSE: &str = "SCRAM-SHA-256$4096:1w3h7Sll/gZQmLcdi1g3oA==$wrfZjjTU90yWF5ogI515DI33eVrv/jcxZnlLHCCssDk=:jlixKQLO5ACbLR+HRnFVGWfwgVNn6Igz5vsXDMcnQhU=";

/// Whether an error is the one a malformed-message case expects.
type Expect = fn(&ScramError) -> bool;

/// Cheap verifier for tests that are not about key derivation.
fn quick_verifier(password: &str) -> Verifier {
    Verifier::from_password(password, b"0123456789abcdef", 16)
}

fn rfc_verifier() -> Verifier {
    let salt = BASE64.decode(rfc7677::SALT).expect("RFC salt is base64");
    Verifier::from_password(rfc7677::PASSWORD, &salt, 4096)
}

/// A server that has accepted a libpq-style client-first-message with `nonce`.
fn server_after_first(verifier: Verifier, nonce: &str) -> ScramServer {
    let mut server = ScramServer::with_nonce(verifier, "SERVERNONCE".to_owned());
    let first = format!("n,,n=,r={nonce}");
    server
        .handle_client_first(first.as_bytes())
        .expect("valid first");
    server
}

/// Runs a whole exchange and returns the server, whichever way it ended.
fn exchange(client: &mut ScramClient, server: &mut ScramServer) -> Result<(), ScramError> {
    let server_first = server.handle_client_first(&client.client_first())?;
    let client_final = client.handle_server_first(&server_first)?;
    let server_final = server.handle_client_final(&client_final)?;
    client.verify_server_final(&server_final)
}

fn random_password(rng: &mut StdRng) -> String {
    (0..24)
        .map(|_| char::from(rng.gen_range(b'!'..=b'~')))
        .collect()
}

#[test]
fn rfc7677_vector_client_side() {
    let mut client =
        ScramClient::with_nonce(rfc7677::PASSWORD, rfc7677::USER, rfc7677::CLIENT_NONCE);
    assert_eq!(client.client_first(), rfc7677::CLIENT_FIRST);
    let client_final = client.handle_server_first(rfc7677::SERVER_FIRST);
    assert_eq!(
        client_final.expect("valid server-first"),
        rfc7677::CLIENT_FINAL
    );
    client
        .verify_server_final(rfc7677::SERVER_FINAL)
        .expect("RFC server signature verifies");
}

#[test]
fn rfc7677_vector_server_side() {
    let mut server = ScramServer::with_nonce(rfc_verifier(), rfc7677::SERVER_NONCE.into());
    let server_first = server.handle_client_first(rfc7677::CLIENT_FIRST);
    assert_eq!(
        server_first.expect("valid client-first"),
        rfc7677::SERVER_FIRST
    );
    let server_final = server.handle_client_final(rfc7677::CLIENT_FINAL);
    assert_eq!(
        server_final.expect("RFC proof verifies"),
        rfc7677::SERVER_FINAL
    );
    let salt = BASE64.decode(rfc7677::SALT).expect("base64");
    let salted = salted_password(rfc7677::PASSWORD, &salt, 4096);
    let expected_client_key = hmac_sha256(&salted, &[b"Client Key"]);
    assert_eq!(server.client_key(), Some(expected_client_key));
}

#[test]
fn verifier_parses_real_postgresql_secrets_and_matches_derivation() {
    for (text, password) in [
        (PG_ALICE_PENCIL, "pencil"),
        (PG_BOB_CORRECT_HORSE, "correct horse"),
    ] {
        let parsed = Verifier::parse(text).expect("PostgreSQL verifier parses");
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt.len(), 16);
        let derived = Verifier::from_password(password, &parsed.salt, parsed.iterations);
        assert_eq!(derived, parsed);
        assert_eq!(parsed.encode(), text);
    }
    let alice = Verifier::parse(PG_ALICE_PENCIL).expect("parses");
    assert_ne!(Verifier::from_password("pencil!", &alice.salt, 4096), alice);
}

#[test]
fn verifier_parse_rejects_malformed_text() {
    let good = PG_ALICE_PENCIL;
    let key = "z3uUF1fCLGDlN3wU0gJVzmngMzc88RvUWEGLMMlGzOc=";
    let cases = [
        String::new(),
        "pencil".to_owned(),
        good.replacen("SCRAM-SHA-256", "SCRAM-SHA-1", 1),
        good.replacen("4096", "0", 1),
        good.replacen("4096", "-1", 1),
        good.replacen("4096", "+4096", 1),
        good.replacen("4096", "99999999999", 1),
        good.replacen("8HA+cfqaJxBptOk0/T+2NA==", "", 1),
        good.replacen("8HA+cfqaJxBptOk0/T+2NA==", "not base64!", 1),
        good.replacen(key, "c2hvcnQ=", 1),
        good.replacen(key, &format!("{key}AAAA"), 1),
        format!("SCRAM-SHA-256$4096:8HA+cfqaJxBptOk0/T+2NA==${key}"),
        good.get(..good.len() - 1).unwrap_or_default().to_owned(),
        "SCRAM-SHA-256$".to_owned(),
        "SCRAM-SHA-256$é:é$é:é".to_owned(),
    ];
    for case in cases {
        assert_eq!(Verifier::parse(&case), None, "{case:?}");
    }
}

#[test]
fn from_password_raises_zero_iterations_to_one() {
    assert_eq!(Verifier::from_password("pw", b"salt", 0).iterations, 1);
}

#[test]
fn client_and_server_agree_on_random_passwords() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for _ in 0..4 {
        let password = random_password(&mut rng);
        let mut salt = [0u8; 16];
        rng.fill(&mut salt);
        let verifier = Verifier::from_password(&password, &salt, 64);
        let mut server = ScramServer::new(verifier);
        let mut client = ScramClient::new(&password);
        exchange(&mut client, &mut server).expect("same password authenticates");
        assert!(server.client_key().is_some());
    }
}

#[test]
fn libpq_style_first_message_and_fresh_nonces() {
    let mut a = ScramClient::new("pw");
    let mut b = ScramClient::new("pw");
    let first = String::from_utf8(a.client_first()).expect("ASCII");
    let nonce = first.strip_prefix("n,,n=,r=").expect("libpq shape");
    assert_eq!(nonce.len(), 24, "base64 of 18 bytes");
    assert!(check_nonce_for_test(nonce));
    assert_ne!(a.client_first(), b.client_first());
    assert_eq!(a.client_first(), first.as_bytes(), "idempotent");
}

fn check_nonce_for_test(nonce: &str) -> bool {
    nonce
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

#[test]
fn wrong_password_is_bad_proof_and_ends_the_exchange() {
    let mut server = ScramServer::new(quick_verifier("right"));
    let mut client = ScramClient::new("wrong");
    let server_first = server.handle_client_first(&client.client_first());
    let client_final = client.handle_server_first(&server_first.expect("first"));
    let result = server.handle_client_final(&client_final.expect("final"));
    assert!(matches!(result, Err(ScramError::BadProof)), "{result:?}");
    assert_eq!(server.client_key(), None);
    let again = server.handle_client_final(b"c=biws,r=x,p=y");
    assert!(matches!(again, Err(ScramError::OutOfOrder)));
}

#[test]
fn pass_through_logs_in_with_recovered_client_key() {
    let verifier = Verifier::parse(PG_ALICE_PENCIL).expect("parses");
    let mut front = ScramServer::new(verifier.clone());
    exchange(&mut ScramClient::new("pencil"), &mut front).expect("client login");
    let client_key = front.client_key().expect("recovered");
    // pgring now logs into "PostgreSQL" holding only keys, never the password.
    let mut client = ScramClient::with_keys(client_key, verifier.server_key);
    let mut postgres = ScramServer::new(verifier);
    exchange(&mut client, &mut postgres).expect("pass-through login");
}

#[test]
fn pass_through_with_wrong_client_key_is_rejected() {
    let verifier = quick_verifier("pw");
    let mut client = ScramClient::with_keys([7; 32], verifier.server_key);
    let result = exchange(&mut client, &mut ScramServer::new(verifier));
    assert!(matches!(result, Err(ScramError::BadProof)), "{result:?}");
}

#[test]
fn client_rejects_forged_or_failed_server_final() {
    let mut client =
        ScramClient::with_nonce(rfc7677::PASSWORD, rfc7677::USER, rfc7677::CLIENT_NONCE);
    client.client_first();
    client
        .handle_server_first(rfc7677::SERVER_FIRST)
        .expect("ok");
    let forged = b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert!(matches!(
        client.verify_server_final(forged),
        Err(ScramError::ServerSignatureMismatch)
    ));
    match client.verify_server_final(b"e=invalid-proof") {
        Err(ScramError::ServerError(reason)) => assert_eq!(reason, "invalid-proof"),
        other => panic!("expected a server error, got {other:?}"),
    }
    for bad in [&b""[..], b"v=", b"v=short", b"x=1", b"v=\xff"] {
        assert!(client.verify_server_final(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn client_rejects_bad_server_first() {
    let cases: &[(&[u8], Expect)] = &[
        (b"r=OTHER123,s=c2FsdA==,i=4096", |e| {
            matches!(e, ScramError::NonceMismatch)
        }),
        (b"r=CLIENTNONCE,s=c2FsdA==,i=4096", |e| {
            matches!(e, ScramError::NonceMismatch)
        }),
        (b"r=CLIENTNONCEx,s=c2FsdA==,i=0", |e| {
            matches!(e, ScramError::IterationsTooSmall(0))
        }),
        (b"r=CLIENTNONCEx,s=c2FsdA==,i=1000001", |e| {
            matches!(
                e,
                ScramError::IterationsTooLarge {
                    iterations: 1_000_001,
                    ..
                }
            )
        }),
        (b"r=CLIENTNONCEx,s=c2FsdA==,i=+5", |e| {
            matches!(e, ScramError::Malformed(_))
        }),
        (b"r=CLIENTNONCEx,s=c2FsdA==,i=99999999999", |e| {
            matches!(e, ScramError::Malformed(_))
        }),
        (b"r=CLIENTNONCEx,s=,i=4096", |e| {
            matches!(e, ScramError::Malformed(_))
        }),
        (b"r=CLIENTNONCEx,s=!!!!,i=4096", |e| {
            matches!(e, ScramError::Malformed(_))
        }),
        (b"r=CLIENTNONCEx,s=c2FsdA==", |e| {
            matches!(e, ScramError::MissingAttribute('i'))
        }),
        (b"s=c2FsdA==,r=CLIENTNONCEx,i=1", |e| {
            matches!(e, ScramError::MissingAttribute('r'))
        }),
        (b"m=ext,r=CLIENTNONCEx,s=c2FsdA==,i=1", |e| {
            matches!(e, ScramError::Malformed(_))
        }),
        (b"r=CLIENTNONCE\xff,s=c2FsdA==,i=1", |e| {
            matches!(e, ScramError::NotUtf8)
        }),
        (b"r=CLIENTNONCE x,s=c2FsdA==,i=1", |e| {
            matches!(e, ScramError::InvalidNonce)
        }),
    ];
    for (msg, expected) in cases {
        let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
        client.client_first();
        match client.handle_server_first(msg) {
            Err(error) => assert!(expected(&error), "{msg:?} gave {error:?}"),
            Ok(_) => panic!("{msg:?} was accepted"),
        }
    }
}

#[test]
fn client_accepts_server_extensions_and_enforces_order() {
    let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
    let early = client.handle_server_first(b"r=CLIENTNONCEx,s=c2FsdA==,i=1");
    assert!(matches!(early, Err(ScramError::OutOfOrder)));
    let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
    client.client_first();
    let reply = client.handle_server_first(b"r=CLIENTNONCEx,s=c2FsdA==,i=1,x=future");
    assert!(reply.is_ok(), "{reply:?}");
    let fresh = ScramClient::new("pw");
    assert!(matches!(
        fresh.verify_server_final(b"v=x"),
        Err(ScramError::OutOfOrder)
    ));
}

#[test]
fn server_rejects_bad_client_first() {
    let too_long = vec![b'a'; MAX_MESSAGE_LEN + 1];
    let cases: &[(&[u8], Expect)] = &[
        (b"p=tls-server-end-point,,n=,r=abc", |e| {
            matches!(e, ScramError::ChannelBindingUnsupported)
        }),
        (b"n,a=bob,n=,r=abc", |e| {
            matches!(e, ScramError::AuthzidUnsupported)
        }),
        (b"x,,n=,r=abc", |e| matches!(e, ScramError::Malformed(_))),
        (b"n,,m=ext,n=,r=abc", |e| {
            matches!(e, ScramError::Malformed(_))
        }),
        (b"n,,n=", |e| matches!(e, ScramError::MissingAttribute('r'))),
        (b"n,,r=abc", |e| {
            matches!(e, ScramError::MissingAttribute('n'))
        }),
        (b"n,,n=,r=", |e| matches!(e, ScramError::InvalidNonce)),
        (b"n,,n=,r=ab\x7fc", |e| {
            matches!(e, ScramError::InvalidNonce)
        }),
        (b"n,,n=\xff,r=abc", |e| matches!(e, ScramError::NotUtf8)),
        (b"n,,n=,r=abc,junk", |e| {
            matches!(e, ScramError::Malformed(_))
        }),
        (b"", |e| matches!(e, ScramError::Malformed(_))),
        (&too_long, |e| {
            matches!(e, ScramError::MessageTooLong { .. })
        }),
    ];
    for (msg, expected) in cases {
        let mut server = ScramServer::new(quick_verifier("pw"));
        match server.handle_client_first(msg) {
            Err(error) => assert!(expected(&error), "{msg:?} gave {error:?}"),
            Ok(_) => panic!("{msg:?} was accepted"),
        }
        // A failed exchange stays failed.
        let retry = server.handle_client_first(b"n,,n=,r=abc");
        assert!(matches!(retry, Err(ScramError::OutOfOrder)));
    }
}

#[test]
fn server_accepts_y_flag_named_user_and_extensions() {
    let verifier = quick_verifier("pw");
    let mut server = ScramServer::with_nonce(verifier.clone(), "S".into());
    let reply = server.handle_client_first(b"y,,n=alice,r=abc,x=ext");
    assert_eq!(
        reply.expect("accepted"),
        b"r=abcS,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=16"
    );
    // With "y,," the channel-binding attribute must echo "y,," (base64 "eSws").
    let mut server = ScramServer::with_nonce(verifier, "S".into());
    server
        .handle_client_first(b"y,,n=,r=abc")
        .expect("accepted");
    let biws = server.handle_client_final(&valid_final_without_key("biws", "abcS"));
    assert!(
        matches!(biws, Err(ScramError::ChannelBindingMismatch)),
        "{biws:?}"
    );
}

fn valid_final_without_key(channel_binding: &str, nonce: &str) -> Vec<u8> {
    let proof = BASE64.encode([0u8; 32]);
    format!("c={channel_binding},r={nonce},p={proof}").into_bytes()
}

#[test]
fn server_rejects_bad_client_final() {
    let proof = BASE64.encode([0u8; 32]);
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        (
            format!("c=eSws,r=abcSERVERNONCE,p={proof}").into_bytes(),
            |e| matches!(e, ScramError::ChannelBindingMismatch),
        ),
        (
            format!("c=!!,r=abcSERVERNONCE,p={proof}").into_bytes(),
            |e| matches!(e, ScramError::ChannelBindingMismatch),
        ),
        (format!("c=biws,r=abcOTHER,p={proof}").into_bytes(), |e| {
            matches!(e, ScramError::NonceMismatch)
        }),
        (format!("c=biws,r=abc,p={proof}").into_bytes(), |e| {
            matches!(e, ScramError::NonceMismatch)
        }),
        (b"c=biws,r=abcSERVERNONCE,p=c2hvcnQ=".to_vec(), |e| {
            matches!(e, ScramError::Malformed(_))
        }),
        (b"c=biws,r=abcSERVERNONCE".to_vec(), |e| {
            matches!(e, ScramError::MissingAttribute('p'))
        }),
        (
            format!("r=abcSERVERNONCE,c=biws,p={proof}").into_bytes(),
            |e| matches!(e, ScramError::MissingAttribute('c')),
        ),
        (format!("c=biws,p={proof}").into_bytes(), |e| {
            matches!(e, ScramError::MissingAttribute('r'))
        }),
        (
            format!("c=biws,r=abcSERVERNONCE,p={proof},x=late").into_bytes(),
            |e| matches!(e, ScramError::MissingAttribute('p')),
        ),
        (
            format!("c=biws,r=abcSERVERNONCE,p={proof}").into_bytes(),
            |e| matches!(e, ScramError::BadProof),
        ),
        (b"c=biws,r=\xff,p=x".to_vec(), |e| {
            matches!(e, ScramError::NotUtf8)
        }),
    ];
    for (msg, expected) in cases {
        let mut server = server_after_first(quick_verifier("pw"), "abc");
        match server.handle_client_final(&msg) {
            Err(error) => assert!(expected(&error), "{msg:?} gave {error:?}"),
            Ok(_) => panic!("{msg:?} was accepted"),
        }
        assert_eq!(server.client_key(), None);
    }
}

#[test]
fn server_rejects_final_before_first() {
    let mut server = ScramServer::new(quick_verifier("pw"));
    let result = server.handle_client_final(rfc7677::CLIENT_FINAL);
    assert!(matches!(result, Err(ScramError::OutOfOrder)));
}

#[test]
fn truncated_messages_are_errors_not_panics() {
    let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
    let mut server = ScramServer::with_nonce(quick_verifier("pw"), "SERVER".into());
    let client_first = client.client_first();
    let server_first = server.handle_client_first(&client_first).expect("first");
    let client_final = client.handle_server_first(&server_first).expect("final");
    for len in 0..client_final.len() {
        let mut server = server_after_first(quick_verifier("pw"), "CLIENTNONCE");
        let truncated = client_final.get(..len).unwrap_or_default();
        assert!(server.handle_client_final(truncated).is_err(), "len {len}");
    }
    for len in 0..server_first.len() {
        let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
        client.client_first();
        let truncated = server_first.get(..len).unwrap_or_default();
        // A prefix can still be valid (a shorter salt); it just must not panic.
        let _ = client.handle_server_first(truncated);
    }
}

#[test]
fn mutated_messages_never_panic() {
    let mut rng = StdRng::seed_from_u64(42);
    let first = b"n,,n=,r=CLIENTNONCE".to_vec();
    let final_msg = {
        let mut client = ScramClient::with_nonce("pw", "", "CLIENTNONCE");
        let mut server = ScramServer::with_nonce(quick_verifier("pw"), "S".into());
        let server_first = server.handle_client_first(&client.client_first());
        client
            .handle_server_first(&server_first.expect("first"))
            .expect("final")
    };
    for _ in 0..2000 {
        let mut server = ScramServer::with_nonce(quick_verifier("pw"), "S".into());
        if server
            .handle_client_first(&mutate(&first, &mut rng))
            .is_ok()
        {
            let _ = server.handle_client_final(&mutate(&final_msg, &mut rng));
        }
    }
}

/// Flips, inserts or drops a few random bytes.
fn mutate(msg: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut out = msg.to_vec();
    for _ in 0..rng.gen_range(0..3) {
        let at = rng.gen_range(0..=out.len());
        match rng.gen_range(0..3) {
            0 if at < out.len() => out[at] = rng.gen(),
            1 => out.insert(at, rng.gen()),
            _ if at < out.len() => {
                out.remove(at);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn debug_output_hides_keys() {
    let verifier = Verifier::parse(PG_ALICE_PENCIL).expect("parses");
    let shown = format!("{verifier:?} {:?}", ScramServer::new(verifier.clone()));
    assert!(!shown.contains("z3uUF1fC"), "{shown}");
    assert!(!format!("{:?}", ScramClient::new("pencil")).contains("pencil"));
}
