//! Value types of the configuration: pool modes, auth types, TLS modes, durations in seconds,
//! file modes, and the two lenient readers PgBouncer users need (comma lists and 0/1 flags).
//!
//! Spellings are PgBouncer's (`src/main.c`: `auth_type_map`, `pool_mode_map`, `sslmode_map`,
//! `load_balance_hosts_map`), so a value copied from a pgbouncer.ini is accepted unchanged.
//! Nothing here knows about tables or keys; locations are added by `parse`.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// When a server connection goes back to the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Released when the client disconnects (after `server_reset_query`).
    Session,
    /// Released at each ReadyForQuery with status `I`.
    Transaction,
    /// Released after every statement; multi-statement transactions are refused.
    Statement,
}

impl PoolMode {
    /// The spelling SHOW POOLS / SHOW DATABASES print.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How clients authenticate to pgring (`auth_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// No authentication; the user name is taken as given.
    Trust,
    /// Like trust, and the user name is ignored too (only useful with forced users).
    Any,
    /// MD5 password challenge (also accepts SCRAM verifiers, as PgBouncer does).
    Md5,
    /// SCRAM-SHA-256, spelled `scram-sha-256`.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// Cleartext password over the wire.
    Plain,
    /// TLS client certificate.
    Cert,
    /// Per-connection method from `auth_hba_file`.
    Hba,
    /// PAM (accepted for compatibility).
    Pam,
    /// LDAP (accepted for compatibility).
    Ldap,
}

impl AuthType {
    /// PgBouncer's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::Trust => "trust",
            AuthType::Any => "any",
            AuthType::Md5 => "md5",
            AuthType::ScramSha256 => "scram-sha-256",
            AuthType::Plain => "plain",
            AuthType::Cert => "cert",
            AuthType::Hba => "hba",
            AuthType::Pam => "pam",
            AuthType::Ldap => "ldap",
        }
    }

    /// Whether clients prove a password, so a secret must come from `auth_file` or `auth_query`.
    pub fn needs_secret(self) -> bool {
        matches!(
            self,
            AuthType::Md5 | AuthType::ScramSha256 | AuthType::Plain
        )
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// libpq-style TLS mode (`client_tls_sslmode`, `server_tls_sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the peer insists.
    Allow,
    /// TLS if the peer offers it.
    Prefer,
    /// TLS always, no certificate check.
    Require,
    /// TLS always, certificate chain checked.
    VerifyCa,
    /// TLS always, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    /// For `client_tls_sslmode`: a client on TCP must use TLS (`require` and stronger).
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// PgBouncer's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// TLS versions out of PgBouncer's `client_tls_protocols` / `server_tls_protocols`: a list
/// (comma, colon or space separated) of `tlsv1.0` ... `tlsv1.3`, `secure` (1.2 and 1.3),
/// `all`, `legacy`, `default`. pgring (rustls) speaks only 1.2 and 1.3, so 1.0 and 1.1 drop
/// out (`dropped`); a list left with neither is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsProtocols {
    /// TLS 1.2 allowed.
    pub v12: bool,
    /// TLS 1.3 allowed.
    pub v13: bool,
    /// The list asked for versions pgring does not speak.
    pub dropped: bool,
}

impl TlsProtocols {
    /// Parses a `*_tls_protocols` value.
    pub fn parse(list: &str) -> Result<TlsProtocols, String> {
        let mut p = TlsProtocols {
            v12: false,
            v13: false,
            dropped: false,
        };
        for word in list.split([',', ':', ' ']).filter(|w| !w.is_empty()) {
            match word.to_ascii_lowercase().as_str() {
                "tlsv1.2" => p.v12 = true,
                "tlsv1.3" => p.v13 = true,
                "secure" | "default" => (p.v12, p.v13) = (true, true),
                "all" | "legacy" => (p.v12, p.v13, p.dropped) = (true, true, true),
                "tlsv1.0" | "tlsv1.1" => p.dropped = true,
                other => return Err(format!("unknown TLS protocol \"{other}\" in \"{list}\"")),
            }
        }
        if !p.v12 && !p.v13 {
            return Err(format!(
                "\"{list}\" leaves no TLS version pgring speaks (1.2, 1.3)"
            ));
        }
        Ok(p)
    }
}

/// The TLS 1.2 cipher suites pgring (rustls) has, by their OpenSSL names.
pub const TLS12_SUITES: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

/// A `*_tls_ciphers` value (the suites of TLS 1.2; 1.3 has its own `*_tls13_ciphers`) as pgring
/// can honour it. PgBouncer's keywords (`default`, `secure`, `normal`, `fast`, `compat`,
/// `legacy`, `insecure`, `all`) each allow every suite rustls has (all of them AEAD with ECDHE,
/// inside even `secure`). A plain list of suite names is honoured: the suites rustls has, in the
/// list's order (`names`); the others are left out (`skipped`). OpenSSL's rule syntax
/// (`HIGH:!aNULL`) is not evaluated (`rules`): then, as when no listed suite is in rustls, every
/// suite rustls has is offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls12Ciphers<'a> {
    /// The suites to offer, in order; empty: all of rustls's.
    pub names: Vec<&'static str>,
    /// Listed suite names rustls does not have (CBC, RSA key exchange, finite-field DHE...).
    pub skipped: Vec<&'a str>,
    /// The value uses OpenSSL's rule syntax.
    pub rules: bool,
}

impl<'a> Tls12Ciphers<'a> {
    /// Reads a `*_tls_ciphers` value.
    pub fn parse(list: &'a str) -> Tls12Ciphers<'a> {
        let mut c = Tls12Ciphers::default();
        const KEYWORDS: [&str; 8] = [
            "default", "secure", "normal", "fast", "compat", "legacy", "insecure", "all",
        ];
        for word in list.split([',', ':', ' ']).filter(|w| !w.is_empty()) {
            if KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word)) {
                return Tls12Ciphers::default();
            }
            // A suite's name has a dash inside; a rule (HIGH, !aNULL, +RSA, @STRENGTH) has none
            // or an operator in front.
            if word.starts_with(['!', '-', '+', '@']) || !word.contains('-') {
                c.rules = true;
                continue;
            }
            match TLS12_SUITES.iter().find(|s| s.eq_ignore_ascii_case(word)) {
                Some(known) if !c.names.contains(known) => c.names.push(known),
                Some(_) => {}
                None => c.skipped.push(word),
            }
        }
        if c.rules {
            c.names.clear();
        }
        c
    }
}

/// The key exchange groups rustls has, by their names in `client_tls_ecdhcurve`.
const KX_GROUPS: [(&str, &[&str]); 3] = [
    ("X25519", &["x25519"]),
    ("P-256", &["p-256", "prime256v1", "secp256r1"]),
    ("P-384", &["p-384", "secp384r1"]),
];

/// A `client_tls_ecdhcurve` value as pgring honours it: `auto` (PgBouncer's default), `default`,
/// `secure` or an empty value offer every group rustls has (X25519, P-256, P-384); one or more
/// curve names (OpenSSL's `prime256v1`, `secp384r1`, or `P-256`, `X25519`; comma- or
/// colon-separated) offer those, in that order. `none` (no ECDHE in PgBouncer, leaving TLS 1.2
/// to finite-field or RSA key exchange) cannot be: rustls has neither, and TLS 1.3 always needs
/// a group; it is `unknown`, as an unknown name is, and every group is offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KxGroups<'a> {
    /// The groups to offer, in order (see `KX_GROUPS`); empty: all.
    pub names: Vec<&'static str>,
    /// Words that name no group rustls has.
    pub unknown: Vec<&'a str>,
}

impl<'a> KxGroups<'a> {
    /// Reads a `client_tls_ecdhcurve` value.
    pub fn parse(list: &'a str) -> KxGroups<'a> {
        let mut g = KxGroups::default();
        for word in list.split([',', ':', ' ']).filter(|w| !w.is_empty()) {
            let lower = word.to_ascii_lowercase();
            if matches!(lower.as_str(), "auto" | "default" | "secure") {
                return KxGroups::default();
            }
            match KX_GROUPS
                .iter()
                .find(|(_, names)| names.contains(&lower.as_str()))
            {
                Some((name, _)) if !g.names.contains(name) => g.names.push(name),
                Some(_) => {}
                None => g.unknown.push(word),
            }
        }
        g
    }
}

/// How a database entry with several hosts picks one (`load_balance_hosts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalanceHosts {
    /// Stay on a host until a connection to it fails.
    Disable,
    /// Each new server connection takes the next host (PgBouncer's default).
    #[default]
    RoundRobin,
}

/// A duration written as seconds, float allowed (`reserve_pool_timeout = 0.5`).
/// Zero usually means "disabled", as in PgBouncer. Parsing refuses negative and non-finite values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seconds(pub f64);

impl Seconds {
    /// Zero seconds: "disabled" for most timeouts.
    pub const ZERO: Seconds = Seconds(0.0);

    /// As a `Duration`; negative or NaN gives zero and overflow saturates (never panics).
    pub fn duration(self) -> Duration {
        Duration::try_from_secs_f64(self.0).unwrap_or(if self.0 > 0.0 {
            Duration::MAX
        } else {
            Duration::ZERO
        })
    }

    /// Whether this is zero (PgBouncer's "disabled").
    pub fn is_zero(self) -> bool {
        self.0 == 0.0
    }

    /// The timeout to arm, or `None` when zero means disabled.
    pub fn timeout(self) -> Option<Duration> {
        (!self.is_zero()).then(|| self.duration())
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Whole seconds print as integers so SHOW CONFIG and reload diffs read "3", not "3.0".
        if self.0.fract() == 0.0 && self.0.abs() < 9.0e15 {
            s.serialize_i64(self.0 as i64)
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecondsVisitor)
    }
}

struct SecondsVisitor;

impl Visitor<'_> for SecondsVisitor {
    type Value = Seconds;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative number of seconds (e.g. 5 or 0.5)")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
        self.visit_f64(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
        if v.is_finite() && v >= 0.0 {
            Ok(Seconds(v))
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
}

/// Unix permission bits (`unix_socket_mode`). Written as PgBouncer does, a string read like C's
/// `strtol(.., 0)` (`"0777"` is octal, `"0x1ff"` hex, `"511"` decimal), or a TOML integer taken
/// literally: write `0o777`, since a bare `777` is decimal 777 = 0o1411.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FileMode {
    const MAX: u32 = 0o7777;

    fn parse(text: &str) -> Option<u32> {
        let t = text.trim();
        let parsed = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            u32::from_str_radix(hex, 16)
        } else if t.len() > 1 && t.starts_with('0') {
            u32::from_str_radix(&t[1..], 8)
        } else {
            t.parse()
        };
        parsed.ok().filter(|m| *m <= Self::MAX)
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FileModeVisitor)
    }
}

struct FileModeVisitor;

impl Visitor<'_> for FileModeVisitor {
    type Value = FileMode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a file mode such as \"0777\" or 0o777")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<FileMode, E> {
        u32::try_from(v)
            .ok()
            .filter(|m| *m <= FileMode::MAX)
            .map(FileMode)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<FileMode, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<FileMode, E> {
        FileMode::parse(v)
            .map(FileMode)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

/// Reads a list written as a TOML array (`["a", "b"]`) or, as in pgbouncer.ini, one
/// comma-separated string (`"a, b"`). Blank items are dropped, names are trimmed.
pub(crate) fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(ListVisitor)
}

struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings or a comma-separated string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        Ok(split_list(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<String>()? {
            items.extend(split_list(&item));
        }
        Ok(items)
    }
}

/// Splits a PgBouncer comma list, trimming blanks around each name.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads a boolean written as `true`/`false` or as PgBouncer's `0`/`1`.
pub(crate) fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(FlagVisitor { seconds: false })
}

/// [`flag`] for a PgBouncer setting that older versions took as a number of seconds and newer
/// ones as a switch (`tcp_defer_accept = 45`): any positive number means on.
pub(crate) fn flag_or_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(FlagVisitor { seconds: true })
}

/// `seconds`: any positive number is `true`, not only 1.
struct FlagVisitor {
    seconds: bool,
}

impl Visitor<'_> for FlagVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.seconds {
            false => "true or false (or PgBouncer's 1 or 0)",
            true => "true or false (or a number: 0 is off)",
        })
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            2.. if self.seconds => Ok(true),
            _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
