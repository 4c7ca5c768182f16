//! Raw protocol bytes, for the tests where exact behaviour matters more than a driver's manners.
//!
//! Just enough of the v3 protocol written by hand: startup packets with any parameters, simple
//! queries, arbitrary (also malformed) frames, and a reader that splits backend messages and
//! decodes ErrorResponse fields. Only trust logins: the drivers cover authentication.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single read may wait before the test fails as a hang.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Protocol version 3.0, as a startup packet carries it.
pub const PROTOCOL_V3: u32 = 196_608;

/// Backend tags the tests look at.
pub const AUTHENTICATION: u8 = b'R';
pub const BACKEND_KEY_DATA: u8 = b'K';
pub const PARAMETER_STATUS: u8 = b'S';
pub const READY_FOR_QUERY: u8 = b'Z';
pub const ERROR_RESPONSE: u8 = b'E';
pub const DATA_ROW: u8 = b'D';
pub const COMMAND_COMPLETE: u8 = b'C';

/// One backend message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// The fields of an ErrorResponse or NoticeResponse, by field code.
#[derive(Debug, Clone, Default)]
pub struct ErrorFields(pub HashMap<u8, String>);

impl ErrorFields {
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut fields = HashMap::new();
        let mut rest = body;
        while let Some((&code, tail)) = rest.split_first() {
            if code == 0 {
                break;
            }
            let (value, tail) = cstr(tail);
            fields.insert(code, value);
            rest = tail;
        }
        ErrorFields(fields)
    }

    /// SQLSTATE ('C').
    pub fn code(&self) -> &str {
        self.0.get(&b'C').map(String::as_str).unwrap_or("")
    }

    /// Non-localized severity ('V'), falling back to 'S'.
    pub fn severity(&self) -> &str {
        self.0
            .get(&b'V')
            .or_else(|| self.0.get(&b'S'))
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.0.get(&b'M').map(String::as_str).unwrap_or("")
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity(), self.code(), self.message())
    }
}

/// Splits a NUL-terminated string off the front.
fn cstr(bytes: &[u8]) -> (String, &[u8]) {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = String::from_utf8_lossy(&bytes[..end]).into_owned();
    (text, bytes.get(end + 1..).unwrap_or(&[]))
}

/// A StartupMessage (protocol 3.0) with these parameters.
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_V3.to_be_bytes().to_vec();
    for (key, value) in params {
        for s in [key, value] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// A tagged frontend message: tag, length (counting itself), body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![tag];
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(body);
    msg
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// Parse of `sql` as statement `name` ("" = unnamed), no parameter types given.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for s in [name, sql] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.extend_from_slice(&[0, 0]);
    message(b'P', &body)
}

/// Bind of `stmt` to the unnamed portal with text parameters.
pub fn bind(stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(stmt.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&[0, 0]);
    message(b'B', &body)
}

/// Describe or Close (`tag`) of statement (`kind` b'S') or portal (b'P') `name`.
pub fn target(tag: u8, kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    message(tag, &body)
}

/// Describe of statement `name`.
pub fn describe_statement(name: &str) -> Vec<u8> {
    target(b'D', b'S', name)
}

/// Execute of the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    message(b'E', &[0, 0, 0, 0, 0])
}

/// Sync.
pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// Flush.
pub fn flush() -> Vec<u8> {
    message(b'H', &[])
}

/// A CancelRequest for the backend key (process id, secret) that a login handed out.
pub fn cancel_request(pid: u32, secret: u32) -> Vec<u8> {
    let mut packet = 16u32.to_be_bytes().to_vec();
    for word in [80_877_102, pid, secret] {
        packet.extend_from_slice(&word.to_be_bytes());
    }
    packet
}

/// Terminate.
pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// What a successful login left behind.
#[derive(Debug, Default)]
pub struct Login {
    /// ParameterStatus values, by name.
    pub params: HashMap<String, String>,
    /// BackendKeyData: (process id, secret key).
    pub key: Option<(u32, u32)>,
}

/// Rows of a simple query, every value as text (NULL = None).
pub type Rows = Vec<Vec<Option<String>>>;

/// A raw client connection.
pub struct Wire {
    stream: TcpStream,
}

impl Wire {
    pub async fn connect(port: u16) -> Wire {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).ok();
        Wire { stream }
    }

    /// Our end's port (the client's address as pgring sees it).
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("a connected socket").port()
    }

    /// Wraps a stream connected some other way (e.g. from a chosen local port).
    pub fn from_stream(stream: TcpStream) -> Wire {
        stream.set_nodelay(true).ok();
        Wire { stream }
    }

    /// Connects and logs in (trust) with these startup parameters; panics on any error.
    pub async fn login(port: u16, params: &[(&str, &str)]) -> (Wire, Login) {
        match Self::try_login(port, params).await {
            Ok(ok) => ok,
            Err(e) => panic!("login with {params:?} failed: {e}"),
        }
    }

    /// Connects and logs in (trust); the ErrorResponse if the login was refused.
    pub async fn try_login(
        port: u16,
        params: &[(&str, &str)],
    ) -> Result<(Wire, Login), ErrorFields> {
        let mut wire = Wire::connect(port).await;
        wire.send(&startup(params)).await;
        let login = wire.finish_login().await?;
        Ok((wire, login))
    }

    /// Reads the login replies up to ReadyForQuery.
    pub async fn finish_login(&mut self) -> Result<Login, ErrorFields> {
        let mut login = Login::default();
        loop {
            let msg = self.recv().await.expect("server closed during login");
            match msg.tag {
                AUTHENTICATION => {
                    let kind = msg
                        .body
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    assert_eq!(
                        kind,
                        Some(0),
                        "only trust logins are supported by the raw client"
                    );
                }
                PARAMETER_STATUS => {
                    let (name, rest) = cstr(&msg.body);
                    let (value, _) = cstr(rest);
                    login.params.insert(name, value);
                }
                BACKEND_KEY_DATA => {
                    let b = &msg.body;
                    assert_eq!(b.len(), 8, "BackendKeyData body is 8 bytes");
                    let pid = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    let secret = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                    login.key = Some((pid, secret));
                }
                ERROR_RESPONSE => return Err(ErrorFields::parse(&msg.body)),
                READY_FOR_QUERY => return Ok(login),
                _ => {} // NoticeResponse and friends
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("writing to the server");
    }

    /// Sends without failing if the peer already closed (for tests that provoke a close).
    pub async fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next message; None when the peer closed (or reset) the connection.
    /// Panics if nothing arrives within READ_TIMEOUT.
    pub async fn recv(&mut self) -> Option<Msg> {
        match tokio::time::timeout(READ_TIMEOUT, self.read_msg()).await {
            Ok(msg) => msg,
            Err(_) => panic!("no message from the server within {READ_TIMEOUT:?}"),
        }
    }

    /// One raw byte (the answer to SSLRequest / GSSENCRequest); None on close.
    pub async fn recv_byte(&mut self) -> Option<u8> {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(READ_TIMEOUT, self.stream.read_exact(&mut byte)).await;
        read.unwrap_or_else(|_| panic!("no byte from the server within {READ_TIMEOUT:?}"))
            .ok()?;
        Some(byte[0])
    }

    async fn read_msg(&mut self) -> Option<Msg> {
        let mut header = [0u8; 5];
        self.stream.read_exact(&mut header).await.ok()?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        assert!(
            (4..=64 << 20).contains(&len),
            "backend message with length {len}"
        );
        let mut body = vec![0; len - 4];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(Msg {
            tag: header[0],
            body,
        })
    }

    /// Runs a simple query; rows of the last result, or the error (read through ReadyForQuery).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Rows, ErrorFields> {
        self.send(&query(sql)).await;
        self.read_result().await
    }

    /// Reads one query's replies up to ReadyForQuery.
    pub async fn read_result(&mut self) -> Result<Rows, ErrorFields> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let msg = self
                .recv()
                .await
                .expect("server closed the connection during a query");
            match msg.tag {
                DATA_ROW => rows.push(parse_data_row(&msg.body)),
                ERROR_RESPONSE => error = Some(ErrorFields::parse(&msg.body)),
                READY_FOR_QUERY => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Runs a query that must return one value.
    pub async fn query_value(&mut self, sql: &str) -> Option<String> {
        let rows = self
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(rows.len(), 1, "{sql}: expected one row, got {rows:?}");
        rows[0].first().cloned().expect("one column")
    }

    /// Reads until an ErrorResponse, then expects the connection to close.
    /// Returns the error, or panics if the connection closed without one.
    pub async fn expect_error_and_close(&mut self) -> ErrorFields {
        let error = loop {
            match self.recv().await {
                Some(msg) if msg.tag == ERROR_RESPONSE => break ErrorFields::parse(&msg.body),
                Some(_) => continue,
                None => panic!("connection closed without an ErrorResponse"),
            }
        };
        assert!(
            self.recv().await.is_none(),
            "connection still open after the error {error}"
        );
        error
    }

    /// Drops the socket with a TCP reset, as a killed process would leave it.
    pub fn abort(self) {
        let sock = socket2::SockRef::from(&self.stream);
        sock.set_linger(Some(Duration::ZERO)).ok();
        drop(self);
    }
}

fn parse_data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut row = Vec::new();
    let Some(count) = body.get(..2) else {
        return row;
    };
    let mut rest = &body[2..];
    for _ in 0..u16::from_be_bytes([count[0], count[1]]) {
        let len = i32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
        rest = &rest[4..];
        if len < 0 {
            row.push(None);
            continue;
        }
        let (value, tail) = rest.split_at(len as usize);
        row.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = tail;
    }
    row
}
