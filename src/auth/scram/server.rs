//! pgring authenticating a client: the server role of the exchange.

use super::*;

/// Server side of the exchange (pgring authenticating a client).
///
/// Call [`handle_client_first`](Self::handle_client_first) with the
/// `SASLInitialResponse` data, send the result in `AuthenticationSASLContinue`, then call
/// [`handle_client_final`](Self::handle_client_final) with the `SASLResponse` data and send
/// the result in `AuthenticationSASLFinal`. Any error ends the exchange for good.
pub struct ScramServer {
    verifier: Verifier,
    server_nonce: String,
    state: ServerState,
}

/// Where a [`ScramServer`] is in the exchange.
enum ServerState {
    AwaitingClientFirst,
    AwaitingClientFinal(ServerExchange),
    Succeeded { client_key: [u8; KEY_LEN] },
    Failed,
}

/// What the server remembers between the first and final client messages.
struct ServerExchange {
    gs2_header: &'static str,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl ScramServer {
    /// Starts an exchange against `verifier`, with a fresh random server nonce.
    pub fn new(verifier: Verifier) -> ScramServer {
        ScramServer::with_nonce(verifier, random_nonce())
    }

    /// Starts an exchange with a chosen server nonce, for golden-vector tests.
    pub(crate) fn with_nonce(verifier: Verifier, server_nonce: String) -> ScramServer {
        ScramServer {
            verifier,
            server_nonce,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// Takes the client-first-message bytes (the `SASLInitialResponse` data), returns the
    /// server-first-message bytes.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let ServerState::AwaitingClientFirst = self.state else {
            return Err(self.fail(ScramError::OutOfOrder));
        };
        let first = parse_client_first(msg).map_err(|e| self.fail(e))?;
        let nonce = format!("{}{}", first.client_nonce, self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = ServerState::AwaitingClientFinal(ServerExchange {
            gs2_header: first.gs2_header,
            nonce,
            client_first_bare: first.bare.to_owned(),
            server_first,
        });
        Ok(reply)
    }

    /// Takes the client-final-message, verifies the proof, and returns the
    /// server-final-message (`v=...`) bytes. A wrong password is [`ScramError::BadProof`].
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        match std::mem::replace(&mut self.state, ServerState::Failed) {
            ServerState::AwaitingClientFinal(exchange) => {
                let (client_key, reply) = self.finish(&exchange, msg)?;
                self.state = ServerState::Succeeded { client_key };
                Ok(reply)
            }
            _ => Err(ScramError::OutOfOrder),
        }
    }

    /// After a successful exchange: the ClientKey recovered from the proof, which together
    /// with the verifier's ServerKey lets [`ScramClient::with_keys`] log into PostgreSQL.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            ServerState::Succeeded { client_key } => Some(client_key),
            _ => None,
        }
    }

    /// Checks the client-final-message against the exchange so far.
    fn finish(
        &self,
        exchange: &ServerExchange,
        msg: &[u8],
    ) -> Result<([u8; KEY_LEN], Vec<u8>), ScramError> {
        let last = parse_client_final(msg)?;
        check_channel_binding(last.channel_binding, exchange.gs2_header)?;
        if last.nonce != exchange.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let auth_message = auth_message(
            &exchange.client_first_bare,
            &exchange.server_first,
            last.without_proof,
        );
        let client_key = self.recover_client_key(&auth_message, &last.proof)?;
        let signature = hmac_sha256(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok((client_key, server_final(&signature)))
    }

    /// ClientKey = proof XOR HMAC(StoredKey, AuthMessage), accepted iff H(ClientKey) is the
    /// StoredKey (RFC 5802 section 3).
    fn recover_client_key(
        &self,
        auth_message: &str,
        proof: &[u8; KEY_LEN],
    ) -> Result<[u8; KEY_LEN], ScramError> {
        let signature = hmac_sha256(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(proof, &signature);
        if constant_time_eq(&sha256(&client_key), &self.verifier.stored_key) {
            Ok(client_key)
        } else {
            Err(ScramError::BadProof)
        }
    }

    /// Marks the exchange failed and passes the error through.
    fn fail(&mut self, error: ScramError) -> ScramError {
        self.state = ServerState::Failed;
        error
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            ServerState::AwaitingClientFirst => "AwaitingClientFirst",
            ServerState::AwaitingClientFinal(_) => "AwaitingClientFinal",
            ServerState::Succeeded { .. } => "Succeeded",
            ServerState::Failed => "Failed",
        };
        f.debug_struct("ScramServer")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
