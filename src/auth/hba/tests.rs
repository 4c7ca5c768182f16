use super::parse::mask_prefix;
use super::*;
use crate::auth::ident::IdentMap;

fn no_files(name: &str) -> Result<String, HbaError> {
    Err(HbaError::Lines(vec![format!("no file {name}")]))
}

fn hba(text: &str) -> Hba {
    Hba::parse(text, &no_files).unwrap_or_else(|e| panic!("{e}"))
}

fn problems(text: &str) -> String {
    match Hba::parse(text, &no_files) {
        Ok(h) => panic!("parsed: {h:?}"),
        Err(e) => e.to_string(),
    }
}

fn host(ip: &str) -> Peer {
    Peer::Host {
        addr: ip.parse().unwrap(),
        tls: false,
    }
}

fn host_tls(ip: &str) -> Peer {
    Peer::Host {
        addr: ip.parse().unwrap(),
        tls: true,
    }
}

fn method_of(h: &Hba, peer: Peer, db: &str, user: &str) -> Option<Method> {
    h.method(peer, db, user).map(|d| d.method)
}

#[test]
fn the_first_matching_rule_decides_and_no_match_refuses() {
    let h = hba("\
# TYPE  DATABASE  USER   ADDRESS        METHOD
local   all       all                   peer
host    app       bob    10.0.0.0/8     reject
host    app       all    10.0.0.0/8     md5
host    all       admin  127.0.0.1/32   trust
hostnossl all     all    ::1/128        scram-sha-256
host    all       all    192.168.1.0 255.255.255.0 password
");
    assert_eq!(h.len(), 6);
    assert_eq!(method_of(&h, Peer::Local, "app", "x"), Some(Method::Peer));
    assert_eq!(
        method_of(&h, host("10.1.2.3"), "app", "bob"),
        Some(Method::Reject)
    );
    assert_eq!(
        method_of(&h, host("10.1.2.3"), "app", "eve"),
        Some(Method::Md5)
    );
    assert_eq!(method_of(&h, host("10.1.2.3"), "other", "eve"), None);
    assert_eq!(
        method_of(&h, host("127.0.0.1"), "x", "admin"),
        Some(Method::Trust)
    );
    assert_eq!(method_of(&h, host("127.0.0.2"), "x", "admin"), None);
    assert_eq!(method_of(&h, host("::1"), "x", "y"), Some(Method::Scram));
    assert_eq!(
        method_of(&h, host("192.168.1.77"), "x", "y"),
        Some(Method::Password)
    );
    assert_eq!(method_of(&h, host("192.168.2.77"), "x", "y"), None);
    assert_eq!(
        h.method(host("10.0.0.1"), "app", "bob").map(|d| d.line),
        Some(3)
    );
}

#[test]
fn lists_keywords_quotes_and_sameuser() {
    let h = hba("\
host  sameuser          all        all  trust
host  \"all\",b         u1,\"u2\"  all  md5
host  c, d              all        all  password
");
    assert_eq!(
        method_of(&h, host("1.2.3.4"), "al", "al"),
        Some(Method::Trust)
    );
    // A quoted keyword is a name: only the database called "all" matches.
    assert_eq!(
        method_of(&h, host("1.2.3.4"), "all", "u2"),
        Some(Method::Md5)
    );
    assert_eq!(method_of(&h, host("1.2.3.4"), "b", "u1"), Some(Method::Md5));
    assert_eq!(method_of(&h, host("1.2.3.4"), "x", "u1"), None);
    assert_eq!(
        method_of(&h, host("1.2.3.4"), "d", "z"),
        Some(Method::Password)
    );
}

#[test]
fn hostssl_needs_tls_hostnossl_refuses_it_and_local_needs_the_socket() {
    let h = hba("hostssl all all all trust\nhostnossl all all all md5\nlocal all all password\n");
    assert_eq!(
        method_of(&h, host_tls("127.0.0.1"), "d", "u"),
        Some(Method::Trust)
    );
    assert_eq!(
        method_of(&h, host("127.0.0.1"), "d", "u"),
        Some(Method::Md5)
    );
    assert_eq!(method_of(&h, Peer::Local, "d", "u"), Some(Method::Password));
    let h = hba("hostnossl all all all md5\n");
    assert_eq!(method_of(&h, host_tls("127.0.0.1"), "d", "u"), None);
}

#[test]
fn a_v4_client_on_a_v6_socket_matches_v4_rules() {
    let h = hba("host all all 127.0.0.0/8 trust\n");
    assert_eq!(
        method_of(&h, host("::ffff:127.0.0.1"), "d", "u"),
        Some(Method::Trust)
    );
}

#[test]
fn continuation_lines_and_comments() {
    let h = hba("host all \\\n  all 0.0.0.0/0 \\\n  md5 # trailing\n\n   # only a comment\n");
    assert_eq!(h.len(), 1);
    assert_eq!(method_of(&h, host("8.8.8.8"), "d", "u"), Some(Method::Md5));
}

#[test]
fn at_files_are_read_relative_to_the_hba_file() {
    let dir = std::env::temp_dir().join(format!("pgring-hba-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("admins"), "alice, bob # the admins\ncarol\n").unwrap();
    std::fs::write(dir.join("hba.conf"), "host all @admins all trust\n").unwrap();
    let h = Hba::load(&dir.join("hba.conf")).unwrap();
    for user in ["alice", "bob", "carol"] {
        assert_eq!(
            method_of(&h, host("1.1.1.1"), "d", user),
            Some(Method::Trust)
        );
    }
    assert_eq!(method_of(&h, host("1.1.1.1"), "d", "dave"), None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_pgring_cannot_honour_is_refused_with_its_line() {
    let found = problems(
        "\
host replication all all trust
host all +staff all trust
host all all db.example.com trust
local all all cert
local all all peer clientcert=verify-full
hostgssenc all all all trust
host all all 10.0.0.0/33 trust
host all all 10.0.0.1 255.0.255.0 trust
host all all all peer
host all all
",
    );
    for needle in [
        "line 1: database keyword \"replication\"",
        "line 2: group membership \"+staff\"",
        "line 3: invalid address \"db.example.com\"",
        "line 4: cert authentication needs TLS",
        "line 5: option \"clientcert=verify-full\"",
        "line 6: unsupported record type \"hostgssenc\"",
        "line 7: invalid prefix length",
        "line 8: invalid mask",
        "line 9: peer authentication works on local",
        "line 10: missing address",
    ] {
        assert!(found.contains(needle), "{needle} missing from:\n{found}");
    }
}

#[test]
fn ident_maps_admit_listed_pairs_and_rules_carry_their_map() {
    let ident = IdentMap::parse("# comment\nops  alice  app\nops bob \"app\"\n").unwrap();
    assert!(ident.allows("ops", "alice", "app"));
    assert!(ident.allows("ops", "bob", "app"));
    assert!(!ident.allows("ops", "alice", "bob"));
    assert!(!ident.allows("dev", "alice", "app"));
    assert!(ident.has("ops") && !ident.has("dev"));
    let bad = IdentMap::parse("ops /^(.*)$ \\1\nops alice\n")
        .unwrap_err()
        .to_string();
    assert!(bad.contains("line 1: regular expression"), "{bad}");
    assert!(bad.contains("line 2: expected MAP"), "{bad}");

    let h = hba("local all all peer map=ops\nhostssl all all all cert map=certs\n");
    let d = h.method(Peer::Local, "d", "u").unwrap();
    assert_eq!((d.method, d.map), (Method::Peer, Some("ops")));
    assert_eq!(h.maps().collect::<Vec<_>>(), [("ops", 1), ("certs", 2)]);
    let found = problems("host all all all md5 map=ops\n");
    assert!(
        found.contains("only map= on peer and cert rules"),
        "{found}"
    );
}

#[test]
fn masks_become_prefixes() {
    let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(mask_prefix(v4("255.255.255.0"), v4("1.2.3.0")), Some(24));
    assert_eq!(mask_prefix(v4("0.0.0.0"), v4("1.2.3.0")), Some(0));
    assert_eq!(mask_prefix(v4("255.255.255.255"), v4("1.2.3.0")), Some(32));
    assert_eq!(mask_prefix(v4("255.0.255.0"), v4("1.2.3.0")), None);
    assert_eq!(mask_prefix(v4("ffff:ffff::"), v4("fe80::")), Some(32));
    assert_eq!(mask_prefix(v4("255.0.0.0"), v4("fe80::")), None);
}
