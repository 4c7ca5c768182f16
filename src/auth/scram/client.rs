//! pgring logging into PostgreSQL: the client role, with a password or pass-through keys.

use super::*;

/// Client side of the exchange (pgring logging into PostgreSQL).
///
/// Send [`client_first`](Self::client_first) in `SASLInitialResponse`, feed the
/// `AuthenticationSASLContinue` data to
/// [`handle_server_first`](Self::handle_server_first) and send its result in
/// `SASLResponse`, then check the `AuthenticationSASLFinal` data with
/// [`verify_server_final`](Self::verify_server_final). Never treat the login as good
/// before that last check passes: it is what proves the server knew the password.
pub struct ScramClient {
    credentials: Credentials,
    username: String,
    client_nonce: String,
    state: ClientState,
}

/// What the client proves knowledge of.
enum Credentials {
    Password(String),
    Keys {
        client_key: [u8; KEY_LEN],
        server_key: [u8; KEY_LEN],
    },
}

/// Where a [`ScramClient`] is in the exchange.
enum ClientState {
    Initial,
    SentFirst,
    SentFinal { server_signature: [u8; KEY_LEN] },
    Failed,
}

impl ScramClient {
    /// A client that proves knowledge of `password` (see [`Verifier::from_password`] for
    /// how much SASLprep is applied).
    pub fn new(password: &str) -> ScramClient {
        ScramClient::build(Credentials::Password(password.to_owned()), random_nonce())
    }

    /// Pass-through: log in with keys instead of a password (ClientKey + ServerKey known).
    ///
    /// The keys must come from the same verifier PostgreSQL holds for the user; the salt
    /// and iteration count the server sends are then irrelevant and no PBKDF2 work is done.
    pub fn with_keys(client_key: [u8; 32], server_key: [u8; 32]) -> ScramClient {
        let credentials = Credentials::Keys {
            client_key,
            server_key,
        };
        ScramClient::build(credentials, random_nonce())
    }

    fn build(credentials: Credentials, client_nonce: String) -> ScramClient {
        ScramClient {
            credentials,
            username: String::new(),
            client_nonce,
            state: ClientState::Initial,
        }
    }

    /// A password client with a chosen username and nonce, for golden-vector tests. The
    /// username is used verbatim (no `=2C`/`=3D` escaping), so keep it plain.
    #[cfg(test)]
    pub(crate) fn with_nonce(password: &str, username: &str, nonce: &str) -> ScramClient {
        let mut client =
            ScramClient::build(Credentials::Password(password.to_owned()), nonce.to_owned());
        client.username = username.to_owned();
        client
    }

    /// The client-first-message: `n,,n=,r=<nonce>`. Calling it again returns the same bytes.
    pub fn client_first(&mut self) -> Vec<u8> {
        self.state = ClientState::SentFirst;
        format!("n,,{}", self.client_first_bare()).into_bytes()
    }

    /// Takes the server-first-message and returns the client-final-message.
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ClientState::SentFirst = self.state else {
            return Err(self.fail(ScramError::OutOfOrder));
        };
        match self.answer(msg) {
            Ok((reply, server_signature)) => {
                self.state = ClientState::SentFinal { server_signature };
                Ok(reply)
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Checks the server-final-message; `Ok` means the server proved it holds the keys.
    pub fn verify_server_final(&self, msg: &[u8]) -> Result<(), ScramError> {
        let ClientState::SentFinal { server_signature } = &self.state else {
            return Err(ScramError::OutOfOrder);
        };
        let received = parse_server_final(msg)?;
        if constant_time_eq(&received, server_signature) {
            Ok(())
        } else {
            Err(ScramError::ServerSignatureMismatch)
        }
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", self.username, self.client_nonce)
    }

    /// Builds the client-final-message and the server signature to expect.
    fn answer(&self, msg: &[u8]) -> Result<(Vec<u8>, [u8; KEY_LEN]), ScramError> {
        let first = parse_server_first(msg)?;
        check_server_nonce(first.nonce, &self.client_nonce)?;
        let (client_key, server_key) = self.keys(&first.salt, first.iterations);
        let without_proof = format!("c=biws,r={}", first.nonce);
        let server_first = as_text(msg)?;
        let auth_message = auth_message(&self.client_first_bare(), server_first, &without_proof);
        let stored_key = sha256(&client_key);
        let client_signature = hmac_sha256(&stored_key, &[auth_message.as_bytes()]);
        let proof = BASE64.encode(xor(&client_key, &client_signature));
        let server_signature = hmac_sha256(&server_key, &[auth_message.as_bytes()]);
        Ok((
            format!("{without_proof},p={proof}").into_bytes(),
            server_signature,
        ))
    }

    /// ClientKey and ServerKey, derived from the password or given directly.
    fn keys(&self, salt: &[u8], iterations: u32) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
        match &self.credentials {
            Credentials::Password(password) => {
                let salted = salted_password(password, salt, iterations);
                (
                    hmac_sha256(&salted, &[b"Client Key"]),
                    hmac_sha256(&salted, &[b"Server Key"]),
                )
            }
            Credentials::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        }
    }

    fn fail(&mut self, error: ScramError) -> ScramError {
        self.state = ClientState::Failed;
        error
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ClientState::Initial => "Initial",
            ClientState::SentFirst => "SentFirst",
            ClientState::SentFinal { .. } => "SentFinal",
            ClientState::Failed => "Failed",
        };
        f.debug_struct("ScramClient")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
