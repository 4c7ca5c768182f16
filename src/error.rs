//! Errors, the side that caused them, and the one place where they become
//! SQLSTATEs.
//!
//! Like pingora, every error records which side failed: a client error closes
//! that client only; a server error closes that server connection (and tells
//! the linked client); an internal error is ours. [`Error::to_client`] is the
//! single mapping from an error to the ErrorResponse the client sees.

use std::io;

use thiserror::Error;

use crate::protocol::backend::ErrorFields;
use crate::protocol::build::Severity;
use crate::protocol::ProtocolError;

/// Which side of the pooler a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The application connection.
    Client,
    /// The PostgreSQL connection.
    Server,
    /// pgring itself.
    Internal,
}

/// An error as PostgreSQL would send it: what the client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    /// FATAL ends the session, ERROR the statement.
    pub severity: Severity,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
}

/// PostgreSQL's message for a cancelled query.
const QUERY_CANCELED_MESSAGE: &str = "canceling statement due to user request";

impl PgError {
    /// PostgreSQL's error for a cancelled query.
    pub fn query_canceled() -> Self {
        PgError::error(sqlstate::QUERY_CANCELED, QUERY_CANCELED_MESSAGE)
    }

    /// A FATAL error.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// An ERROR-level error.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Error,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// The same error at FATAL severity.
    pub fn into_fatal(mut self) -> Self {
        self.severity = Severity::Fatal;
        self
    }

    /// Appends this error as an ErrorResponse.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        crate::protocol::build::error_response(buf, self.severity, &self.code, &self.message);
    }
}

impl From<ErrorFields> for PgError {
    fn from(e: ErrorFields) -> Self {
        let severity = if e.severity == "FATAL" || e.severity == "PANIC" {
            Severity::Fatal
        } else {
            Severity::Error
        };
        PgError {
            severity,
            code: e.code,
            message: e.message,
        }
    }
}

/// SQLSTATEs pgring itself raises.
pub mod sqlstate {
    /// protocol_violation
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// invalid_password
    pub const INVALID_PASSWORD: &str = "28P01";
    /// invalid_authorization_specification
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// invalid_catalog_name
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// too_many_connections
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// sqlclient_unable_to_establish_sqlconnection
    pub const CANNOT_CONNECT: &str = "08001";
    /// connection_failure
    pub const CONNECTION_FAILURE: &str = "08006";
    /// cannot_connect_now
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// admin_shutdown
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// query_canceled
    pub const QUERY_CANCELED: &str = "57014";
    /// feature_not_supported
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// configuration_limit_exceeded
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
    /// duplicate_prepared_statement
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
    /// invalid_sql_statement_name
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    /// idle_in_transaction_session_timeout
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    /// syntax_error
    pub const SYNTAX_ERROR: &str = "42601";
    /// insufficient_privilege
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
}

/// Everything that can end a client session or a server connection.
#[derive(Debug, Error)]
pub enum Error {
    /// The client's socket failed or closed.
    #[error("client I/O: {0}")]
    ClientIo(#[source] io::Error),
    /// The client broke the protocol.
    #[error("client protocol violation: {0}")]
    ClientProtocol(#[source] ProtocolError),
    /// The client closed the connection.
    #[error("client close request")]
    ClientClosed,
    /// The server's socket failed or closed.
    #[error("server I/O: {0}")]
    ServerIo(#[source] io::Error),
    /// The server broke the protocol.
    #[error("server protocol violation: {0}")]
    ServerProtocol(#[source] ProtocolError),
    /// PostgreSQL answered with an error where pgring needed success
    /// (login, parameter sync, reset query).
    #[error("server error {}: {}", .0.code, .0.message)]
    Server(PgError),
    /// pgring refuses the client (auth, limits, unknown database,
    /// timeouts): sent to the client as is.
    #[error("{}", .0.message)]
    Refused(PgError),
    /// A cancel request came for the client while its request waited for a server: the
    /// request fails as PostgreSQL fails a cancelled query, and the client goes on.
    #[error("{}", QUERY_CANCELED_MESSAGE)]
    WaitCanceled,
}

impl Error {
    /// Which side failed.
    pub fn side(&self) -> Side {
        match self {
            Error::ClientIo(_) | Error::ClientProtocol(_) | Error::ClientClosed => Side::Client,
            Error::ServerIo(_) | Error::ServerProtocol(_) | Error::Server(_) => Side::Server,
            Error::Refused(_) | Error::WaitCanceled => Side::Internal,
        }
    }

    /// The ErrorResponse the client should see, if it can still hear one.
    pub fn to_client(&self) -> Option<PgError> {
        match self {
            Error::ClientIo(_) | Error::ClientClosed => None,
            Error::ClientProtocol(e) => {
                Some(PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))
            }
            Error::ServerIo(_) | Error::ServerProtocol(_) => Some(PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "server conn crashed?",
            )),
            Error::Server(e) | Error::Refused(e) => Some(e.clone()),
            Error::WaitCanceled => Some(PgError::query_canceled()),
        }
    }

    /// The same error, with a PostgreSQL-side error raised to FATAL (it
    /// ends the client session).
    pub fn into_fatal(self) -> Self {
        match self {
            Error::Server(e) => Error::Server(e.into_fatal()),
            Error::Refused(e) => Error::Refused(e.into_fatal()),
            other => other,
        }
    }

    /// A refusal with a FATAL error.
    pub fn refuse(code: &str, message: impl Into<String>) -> Self {
        Error::Refused(PgError::fatal(code, message))
    }
}

/// Results in the pooler.
pub type Result<T, E = Error> = std::result::Result<T, E>;
