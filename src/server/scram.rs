//! Server side of SCRAM-SHA-256 password authentication (RFC 5802, RFC 7677), as PostgreSQL does
//! it, without any I/O: the connection code moves the message bodies, this module checks them.
//!
//! The exchange, after the startup packet:
//!
//! | direction | message                                   | body                                    |
//! |-----------|-------------------------------------------|-----------------------------------------|
//! | server →  | AuthenticationSASL (`R`, code 10)         | [`ScramExchange::mechanisms`]           |
//! | → server  | SASLInitialResponse (`p`)                 | to [`ScramExchange::client_first`]      |
//! | server →  | AuthenticationSASLContinue (`R`, code 11) | the server-first-message it returned    |
//! | → server  | SASLResponse (`p`)                        | to [`ScramExchange::client_final`]      |
//! | server →  | AuthenticationSASLFinal (`R`, code 12)    | the server-final-message it returned    |
//! | server →  | AuthenticationOk (`R`, code 0)            |                                         |
//!
//! As in PostgreSQL:
//! * the only mechanism is `SCRAM-SHA-256`. There is no TLS, hence no `SCRAM-SHA-256-PLUS` and
//!   no channel binding: the client's GS2 header must be `n,,` (the client does not support
//!   channel binding) or `y,,` (it does, but thinks the server does not, which is true); `p=...`
//!   is refused;
//! * the user name inside the SCRAM messages is ignored (clients send `n=`; the role is the one
//!   of the startup packet), an authorization identity (`a=`) and mandatory extensions (`m=`)
//!   are refused, optional extensions are ignored;
//! * the password is SASLprep-normalised when that succeeds and used as raw UTF-8 bytes
//!   otherwise, exactly as the server and libpq/`postgres-protocol` clients do;
//! * the verifier keeps only the salt, iteration count, StoredKey and ServerKey — not the
//!   password.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The SASL mechanism name.
const MECHANISM: &str = "SCRAM-SHA-256";
/// PBKDF2 iterations of a new verifier (PostgreSQL's default `scram_iterations`).
const ITERATIONS: u32 = 4096;
/// Length of a new verifier's random salt (as PostgreSQL).
const SALT_LEN: usize = 16;
/// Random bytes of the server's part of the nonce (as PostgreSQL), before base64.
const SERVER_NONCE_LEN: usize = 18;

/// A password in the form SCRAM checks against: salt, iteration count, StoredKey and ServerKey
/// (RFC 5802 §3). The password itself is not kept.
#[derive(Clone)]
pub(crate) struct ScramVerifier {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl ScramVerifier {
    /// Derives the verifier from a plaintext password: a random 16-byte salt, 4096 PBKDF2
    /// iterations.
    ///
    /// The password is SASLprep-normalised; a password SASLprep refuses (for instance one with
    /// unassigned or prohibited code points) is used as its raw UTF-8 bytes, as PostgreSQL and
    /// its clients do.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub(crate) fn from_password(password: &str) -> ScramVerifier {
        let mut salt = vec![0u8; SALT_LEN];
        getrandom::fill(&mut salt).expect("the operating system's random number generator failed");
        Self::with_salt(password, salt, ITERATIONS)
    }

    /// Derives the verifier from a password, salt and iteration count.
    fn with_salt(password: &str, salt: Vec<u8>, iterations: u32) -> ScramVerifier {
        let normalized = stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password));
        let mut salted_password = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(normalized.as_bytes(), &salt, iterations, &mut salted_password);
        let client_key = hmac(&salted_password, &[b"Client Key"]);
        ScramVerifier {
            salt,
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted_password, &[b"Server Key"]),
        }
    }
}

impl std::fmt::Debug for ScramVerifier {
    /// Shows the salt and iteration count only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("salt", &BASE64.encode(&self.salt))
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Why an authentication attempt failed. Each is answered with a FATAL ErrorResponse whose
/// SQLSTATE is [`ScramError::sqlstate`], and the connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScramError {
    /// A message does not follow the SASL/SCRAM syntax.
    #[error("malformed SCRAM message: {0}")]
    Malformed(String),
    /// The client chose a SASL mechanism other than `SCRAM-SHA-256`.
    #[error("client selected an invalid SASL authentication mechanism: {0:?}")]
    UnsupportedMechanism(String),
    /// The client requires channel binding (GS2 flag `p`), which needs TLS.
    #[error("client requires SCRAM channel binding, but the server does not support it (no SSL)")]
    ChannelBindingUnsupported,
    /// The client uses a SCRAM feature the server does not support (an authorization identity,
    /// a mandatory extension).
    #[error("client uses an unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    /// The channel-binding attribute of the client-final-message is not the GS2 header of the
    /// client-first-message.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// The nonce of the client-final-message is not the one of the server-first-message.
    #[error("invalid SCRAM response: nonce does not match")]
    NonceMismatch,
    /// The client's proof is wrong: the client does not know the password.
    #[error("password authentication failed")]
    WrongPassword,
    /// A message came at a point of the exchange where it was not expected (or after the
    /// exchange had failed or finished).
    #[error("unexpected SASL message at this point of the authentication exchange")]
    OutOfSequence,
    /// No random bytes for the server nonce.
    #[error("cannot generate a SCRAM nonce: {0}")]
    Random(getrandom::Error),
}

impl ScramError {
    /// The SQLSTATE of the FATAL ErrorResponse that reports this error (the codes PostgreSQL
    /// uses).
    pub(crate) fn sqlstate(&self) -> &'static str {
        match self {
            // invalid_password
            ScramError::WrongPassword => "28P01",
            // feature_not_supported
            ScramError::Unsupported(_) => "0A000",
            // internal_error
            ScramError::Random(_) => "XX000",
            // protocol_violation
            ScramError::Malformed(_)
            | ScramError::UnsupportedMechanism(_)
            | ScramError::ChannelBindingUnsupported
            | ScramError::ChannelBindingMismatch
            | ScramError::NonceMismatch
            | ScramError::OutOfSequence => "08P01",
        }
    }
}

/// Where an exchange is.
enum State {
    /// Waiting for the SASLInitialResponse.
    Initial,
    /// The server-first-message was sent; waiting for the SASLResponse.
    ServerFirstSent {
        /// The GS2 header of the client-first-message (`n,,` or `y,,`).
        gs2_header: String,
        /// The client-first-message without its GS2 header.
        client_first_bare: String,
        /// The server-first-message.
        server_first: String,
        /// Client nonce followed by server nonce.
        nonce: String,
    },
    /// The exchange succeeded or failed; nothing more is accepted.
    Finished,
}

/// One authentication attempt of one connection against a [`ScramVerifier`].
///
/// Call [`ScramExchange::client_first`] then [`ScramExchange::client_final`]; any error ends
/// the attempt (later calls fail with [`ScramError::OutOfSequence`]).
pub(crate) struct ScramExchange<'a> {
    verifier: &'a ScramVerifier,
    state: State,
}

impl<'a> ScramExchange<'a> {
    /// Starts an attempt against `verifier`.
    pub(crate) fn new(verifier: &'a ScramVerifier) -> Self {
        ScramExchange {
            verifier,
            state: State::Initial,
        }
    }

    /// The body of AuthenticationSASL (`R`, code 10), after the code: the list of mechanisms,
    /// `SCRAM-SHA-256\0\0`.
    pub(crate) fn mechanisms() -> &'static [u8] {
        b"SCRAM-SHA-256\0\0"
    }

    /// Handles the body of the SASLInitialResponse (`p`) message — the mechanism name
    /// (C string), the length of the initial response (i32), the client-first-message — and
    /// returns the server-first-message, the body (after the code) of the
    /// AuthenticationSASLContinue (`R`, code 11) to send.
    pub(crate) fn client_first(&mut self, sasl_initial_response_body: &[u8]) -> Result<Vec<u8>, ScramError> {
        let mut random = [0u8; SERVER_NONCE_LEN];
        getrandom::fill(&mut random).map_err(ScramError::Random)?;
        self.client_first_with_nonce(sasl_initial_response_body, &BASE64.encode(random))
    }

    /// [`ScramExchange::client_first`] with the server's part of the nonce given.
    fn client_first_with_nonce(&mut self, body: &[u8], server_nonce: &str) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Initial) {
            self.state = State::Finished;
            return Err(ScramError::OutOfSequence);
        }
        self.state = State::Finished;

        // SASLInitialResponse: mechanism\0, i32 length (-1: none), the initial response.
        let nul = body.iter().position(|&b| b == 0).ok_or_else(|| {
            ScramError::Malformed("the SASLInitialResponse has no NUL-terminated mechanism name".into())
        })?;
        let mechanism = &body[..nul];
        if mechanism != MECHANISM.as_bytes() {
            return Err(ScramError::UnsupportedMechanism(
                String::from_utf8_lossy(mechanism).into_owned(),
            ));
        }
        let rest = &body[nul + 1..];
        let Some((length, data)) = rest.split_first_chunk::<4>() else {
            return Err(ScramError::Malformed(
                "the SASLInitialResponse has no length of its initial response".into(),
            ));
        };
        let length = i32::from_be_bytes(*length);
        if length < 0 {
            return Err(ScramError::Malformed(
                "the SASLInitialResponse has no initial response".into(),
            ));
        }
        if length as usize != data.len() {
            return Err(ScramError::Malformed(format!(
                "the SASLInitialResponse announces {length} bytes of initial response but carries {}",
                data.len()
            )));
        }
        let message = utf8(data, "client-first-message")?;

        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (gs2_header, bare) = split_gs2_header(message)?;

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut attributes = bare.split(',');
        let first = attributes.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(ScramError::Unsupported("a mandatory extension (m=)"));
        }
        // The user name is ignored: the role is the one of the startup packet.
        attribute(first, 'n', "client-first-message")?;
        let client_nonce = attribute(attributes.next().unwrap_or_default(), 'r', "client-first-message")?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(is_printable) {
            return Err(ScramError::Malformed(
                "the client nonce is empty or has non-printable characters".into(),
            ));
        }
        // Optional extensions: none supported, so ignored, but they must be attributes.
        for extension in attributes {
            any_attribute(extension, "client-first-message")?;
        }

        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = State::ServerFirstSent {
            gs2_header: gs2_header.to_owned(),
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        };
        Ok(reply)
    }

    /// Handles the body of the SASLResponse (`p`) message, the client-final-message. On a
    /// correct proof, returns the server-final-message (`v=...`), the body (after the code) of
    /// the AuthenticationSASLFinal (`R`, code 12) to send, followed by AuthenticationOk.
    pub(crate) fn client_final(&mut self, sasl_response_body: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::ServerFirstSent {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Finished)
        else {
            return Err(ScramError::OutOfSequence);
        };
        let message = utf8(sasl_response_body, "client-final-message")?;

        // client-final-message = channel-binding "," nonce ["," extensions] "," proof
        let (without_proof, proof) = message
            .rsplit_once(',')
            .ok_or_else(|| ScramError::Malformed("the client-final-message has too few attributes".into()))?;
        let proof = attribute(proof, 'p', "client-final-message")?;
        let mut attributes = without_proof.split(',');
        let channel_binding = attribute(attributes.next().unwrap_or_default(), 'c', "client-final-message")?;
        let final_nonce = attribute(attributes.next().unwrap_or_default(), 'r', "client-final-message")?;
        for extension in attributes {
            any_attribute(extension, "client-final-message")?;
        }

        let channel_binding = decode(channel_binding, "channel binding")?;
        if channel_binding != gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if final_nonce != nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof: [u8; 32] = decode(proof, "client proof")?
            .try_into()
            .map_err(|proof: Vec<u8>| {
                ScramError::Malformed(format!(
                    "the client proof has {} bytes instead of 32",
                    proof.len()
                ))
            })?;

        // AuthMessage = client-first-message-bare "," server-first-message ","
        //               client-final-message-without-proof
        let auth_message = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let verifier = self.verifier;
        // ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); H(ClientKey) must be StoredKey.
        let client_signature = hmac(&verifier.stored_key, &auth_message);
        let mut client_key = proof;
        for (key, signature) in client_key.iter_mut().zip(client_signature) {
            *key ^= signature;
        }
        if !constant_time_eq(&Sha256::digest(client_key), &verifier.stored_key) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&verifier.server_key, &auth_message);
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

/// HMAC-SHA-256 of the concatenation of `parts` under `key`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Compares two byte strings in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(difference) == 0
}

/// Splits a client-first-message into its GS2 header (with both commas) and the bare message.
fn split_gs2_header(message: &str) -> Result<(&str, &str), ScramError> {
    let mut parts = message.splitn(3, ',');
    let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ScramError::Malformed(
            "the client-first-message does not start with a GS2 header".into(),
        ));
    };
    match flag {
        "n" | "y" => {}
        flag if flag.starts_with("p=") => return Err(ScramError::ChannelBindingUnsupported),
        flag => {
            return Err(ScramError::Malformed(format!(
                "unexpected channel-binding flag {flag:?} (expected \"n\" or \"y\")"
            )));
        }
    }
    if !authzid.is_empty() {
        return Err(if authzid.starts_with("a=") {
            ScramError::Unsupported("an authorization identity (a=)")
        } else {
            ScramError::Malformed(format!("unexpected GS2 attribute {authzid:?}"))
        });
    }
    let header_len = flag.len() + authzid.len() + 2;
    Ok((&message[..header_len], bare))
}

/// The value of `text`, which must be the attribute `name=value`.
fn attribute<'m>(text: &'m str, name: char, message: &str) -> Result<&'m str, ScramError> {
    match text.strip_prefix(name).and_then(|t| t.strip_prefix('=')) {
        Some(value) => Ok(value),
        None => Err(ScramError::Malformed(format!(
            "expected attribute \"{name}=\" in the {message}, found {:?}",
            text.split('=').next().unwrap_or_default()
        ))),
    }
}

/// Checks that `text` is an attribute, `letter=value`.
fn any_attribute(text: &str, message: &str) -> Result<(), ScramError> {
    let bytes = text.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b'=' {
        Ok(())
    } else {
        Err(ScramError::Malformed(format!(
            "invalid attribute {text:?} in the {message}"
        )))
    }
}

/// `printable = %x21-2B / %x2D-7E` (RFC 5802 §7): visible ASCII except the comma.
fn is_printable(byte: u8) -> bool {
    matches!(byte, 0x21..=0x2B | 0x2D..=0x7E)
}

/// `bytes` as UTF-8.
fn utf8<'m>(bytes: &'m [u8], message: &str) -> Result<&'m str, ScramError> {
    std::str::from_utf8(bytes).map_err(|_| ScramError::Malformed(format!("the {message} is not valid UTF-8")))
}

/// Decodes the base64 attribute value `value`, named `what`.
fn decode(value: &str, what: &str) -> Result<Vec<u8>, ScramError> {
    BASE64
        .decode(value)
        .map_err(|e| ScramError::Malformed(format!("the {what} is not valid base64: {e}")))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::frontend;

    use super::*;

    /// The body (after tag and length) of a SASLInitialResponse carrying `data`.
    fn initial_response(mechanism: &str, data: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        frontend::sasl_initial_response(mechanism, data, &mut buf).unwrap();
        buf[5..].to_vec()
    }

    /// The body (after tag and length) of a SASLResponse carrying `data`.
    fn response(data: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        frontend::sasl_response(data, &mut buf).unwrap();
        buf[5..].to_vec()
    }

    /// Runs a whole exchange between the `postgres-protocol` client (the one of tokio-postgres)
    /// knowing `client_password` and a server with `server_password`.
    fn exchange(
        server_password: &str,
        client_password: &str,
        channel_binding: ChannelBinding,
    ) -> Result<(), ScramError> {
        let verifier = ScramVerifier::from_password(server_password);
        let mut server = ScramExchange::new(&verifier);
        let mut client = ScramSha256::new(client_password.as_bytes(), channel_binding);

        let server_first = server.client_first(&initial_response(MECHANISM, client.message()))?;
        client
            .update(&server_first)
            .expect("the client accepts the server-first-message");
        let server_final = server.client_final(&response(client.message()))?;
        client
            .finish(&server_final)
            .expect("the client accepts the server's signature");
        Ok(())
    }

    /// Feeds `server` the client-first-message of a `postgres-protocol` client with `password`;
    /// returns the client and its client-final-message (not yet sent).
    fn client_messages(password: &str, server: &mut ScramExchange<'_>) -> (ScramSha256, Vec<u8>) {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let server_first = server
            .client_first(&initial_response(MECHANISM, client.message()))
            .unwrap();
        client.update(&server_first).unwrap();
        let client_final = client.message().to_vec();
        (client, client_final)
    }

    #[test]
    fn interoperates_with_the_postgres_protocol_client() {
        exchange("s3cret", "s3cret", ChannelBinding::unsupported()).unwrap();
        exchange("s3cret", "s3cret", ChannelBinding::unrequested()).unwrap();
        exchange("", "", ChannelBinding::unsupported()).unwrap();
        exchange(
            "pässwörd, with = commas",
            "pässwörd, with = commas",
            ChannelBinding::unsupported(),
        )
        .unwrap();
    }

    #[test]
    fn normalizes_the_password_as_the_client_does() {
        // SASLprep maps a no-break space to a space and the Roman numeral Ⅸ to "IX": both sides
        // must do it for the proof to match.
        exchange("a\u{a0}b \u{2168}", "a b IX", ChannelBinding::unsupported()).unwrap();
        exchange("a b IX", "a\u{a0}b \u{2168}", ChannelBinding::unsupported()).unwrap();
        // A prohibited character (U+0007): both use the raw bytes.
        exchange("bell\u{7}", "bell\u{7}", ChannelBinding::unsupported()).unwrap();
    }

    #[test]
    fn rejects_a_wrong_password() {
        let err = exchange("s3cret", "guess", ChannelBinding::unsupported()).unwrap_err();
        assert!(matches!(err, ScramError::WrongPassword), "{err:?}");
        assert_eq!(err.to_string(), "password authentication failed");
        assert_eq!(err.sqlstate(), "28P01");
        let err = exchange("s3cret", "", ChannelBinding::unsupported()).unwrap_err();
        assert!(matches!(err, ScramError::WrongPassword), "{err:?}");
    }

    #[test]
    fn matches_the_rfc_7677_example() {
        // RFC 7677 §3: user "user", password "pencil".
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let verifier = ScramVerifier::with_salt("pencil", salt, 4096);
        let mut server = ScramExchange::new(&verifier);
        let server_first = server
            .client_first_with_nonce(
                &initial_response(MECHANISM, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"),
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            )
            .unwrap();
        assert_eq!(
            server_first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let server_final = server
            .client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(server_final, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn server_first_message_has_fresh_nonce_salt_and_iterations() {
        let verifier = ScramVerifier::from_password("pw");
        assert_eq!(verifier.salt.len(), SALT_LEN);
        assert_ne!(verifier.salt, ScramVerifier::from_password("pw").salt);
        let reply = |verifier| {
            let mut server = ScramExchange::new(verifier);
            let reply = server
                .client_first(&initial_response(MECHANISM, b"n,,n=,r=abc"))
                .unwrap();
            String::from_utf8(reply).unwrap()
        };
        let (first, second) = (reply(&verifier), reply(&verifier));
        assert_ne!(first, second);
        let attributes: Vec<&str> = first.split(',').collect();
        let nonce = attributes[0].strip_prefix("r=abc").unwrap();
        assert_eq!(BASE64.decode(nonce).unwrap().len(), SERVER_NONCE_LEN);
        assert_eq!(attributes[1], format!("s={}", BASE64.encode(&verifier.salt)));
        assert_eq!(attributes[2], "i=4096");
        assert_eq!(ScramExchange::mechanisms(), b"SCRAM-SHA-256\0\0");
    }

    /// The error of `client_first` for the SASLInitialResponse body `body`.
    fn first_error(body: &[u8]) -> ScramError {
        let verifier = ScramVerifier::with_salt("pw", b"salt".to_vec(), 1);
        ScramExchange::new(&verifier).client_first(body).unwrap_err()
    }

    #[test]
    fn rejects_malformed_initial_responses() {
        let malformed = |body: &[u8], expected: &str| {
            let err = first_error(body);
            assert!(matches!(err, ScramError::Malformed(_)), "{err:?}");
            assert!(
                err.to_string().contains(expected),
                "{err} should contain {expected:?}"
            );
            assert_eq!(err.sqlstate(), "08P01");
        };
        malformed(b"garbage", "no NUL-terminated mechanism name");
        malformed(b"SCRAM-SHA-256\0\0\0", "no length");
        malformed(b"SCRAM-SHA-256\0\xff\xff\xff\xff", "no initial response");
        let mut short = initial_response(MECHANISM, b"n,,n=,r=abc");
        short.pop();
        malformed(&short, "announces 11 bytes of initial response but carries 10");
        malformed(&initial_response(MECHANISM, b"garbage"), "GS2 header");
        malformed(
            &initial_response(MECHANISM, b"x,,n=,r=abc"),
            "channel-binding flag \"x\"",
        );
        malformed(
            &initial_response(MECHANISM, b"n,,r=abc"),
            "expected attribute \"n=\"",
        );
        malformed(
            &initial_response(MECHANISM, b"n,,n="),
            "expected attribute \"r=\"",
        );
        malformed(&initial_response(MECHANISM, b"n,,n=,r="), "nonce is empty");
        malformed(&initial_response(MECHANISM, b"n,,n=,r=a b"), "non-printable");
        malformed(
            &initial_response(MECHANISM, b"n,,n=,r=abc,junk"),
            "invalid attribute \"junk\"",
        );
        malformed(&initial_response(MECHANISM, b"n,,n=,r=\xff"), "not valid UTF-8");
        // Optional extensions are ignored.
        let verifier = ScramVerifier::with_salt("pw", b"salt".to_vec(), 1);
        ScramExchange::new(&verifier)
            .client_first(&initial_response(MECHANISM, b"n,,n=,r=abc,x=ext"))
            .unwrap();
    }

    #[test]
    fn rejects_other_mechanisms() {
        for mechanism in ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1", "PLAIN", ""] {
            let err = first_error(&initial_response(mechanism, b"n,,n=,r=abc"));
            assert!(
                matches!(&err, ScramError::UnsupportedMechanism(m) if m == mechanism),
                "{err:?}"
            );
            assert!(
                err.to_string().contains("invalid SASL authentication mechanism"),
                "{err}"
            );
        }
    }

    #[test]
    fn rejects_channel_binding() {
        let client = ScramSha256::new(b"pw", ChannelBinding::tls_server_end_point(vec![1; 32]));
        assert!(client.message().starts_with(b"p=tls-server-end-point,,"));
        let err = first_error(&initial_response(MECHANISM, client.message()));
        assert!(matches!(err, ScramError::ChannelBindingUnsupported), "{err:?}");
        assert_eq!(err.sqlstate(), "08P01");
    }

    #[test]
    fn rejects_authorization_identities_and_mandatory_extensions() {
        let err = first_error(&initial_response(MECHANISM, b"n,a=admin,n=,r=abc"));
        assert!(matches!(err, ScramError::Unsupported(_)), "{err:?}");
        assert!(err.to_string().contains("authorization identity"), "{err}");
        assert_eq!(err.sqlstate(), "0A000");
        let err = first_error(&initial_response(MECHANISM, b"n,,m=ext,n=,r=abc"));
        assert!(matches!(err, ScramError::Unsupported(_)), "{err:?}");
        assert!(err.to_string().contains("mandatory extension"), "{err}");
    }

    #[test]
    fn rejects_a_nonce_mismatch() {
        let verifier = ScramVerifier::from_password("pw");
        let mut server = ScramExchange::new(&verifier);
        let (_, client_final) = client_messages("pw", &mut server);
        let client_final = String::from_utf8(client_final).unwrap();
        // Another server nonce of the same length (the proof is then wrong too, but the nonce
        // is checked first).
        let (c, rest) = client_final.split_once(",r=").unwrap();
        let (nonce, proof) = rest.split_once(',').unwrap();
        let mut nonce = nonce.to_owned();
        let last = nonce.pop().unwrap();
        nonce.push(if last == 'A' { 'B' } else { 'A' });
        let err = server
            .client_final(format!("{c},r={nonce},{proof}").as_bytes())
            .unwrap_err();
        assert!(matches!(err, ScramError::NonceMismatch), "{err:?}");
        assert_eq!(err.sqlstate(), "08P01");
    }

    #[test]
    fn rejects_a_channel_binding_mismatch() {
        // The client announced "n,," but its final message says "y,," (eSws).
        let verifier = ScramVerifier::from_password("pw");
        let mut server = ScramExchange::new(&verifier);
        let (_, client_final) = client_messages("pw", &mut server);
        let client_final = String::from_utf8(client_final).unwrap();
        let tampered = client_final.replacen("c=biws,", "c=eSws,", 1);
        assert_ne!(tampered, client_final);
        let err = server.client_final(tampered.as_bytes()).unwrap_err();
        assert!(matches!(err, ScramError::ChannelBindingMismatch), "{err:?}");
    }

    #[test]
    fn rejects_malformed_final_responses() {
        let verifier = ScramVerifier::from_password("pw");
        let cases: &[(&[u8], &str)] = &[
            (b"garbage", "too few attributes"),
            (b"\xff", "not valid UTF-8"),
            (b"c=biws,r=x", "expected attribute \"p=\""),
            (b"r=x,c=biws,p=AAAA", "expected attribute \"c=\""),
            (b"c=biws,p=AAAA", "expected attribute \"r=\""),
            (b"c=!!!!,r=x,p=AAAA", "channel binding is not valid base64"),
        ];
        for (body, expected) in cases {
            let mut server = ScramExchange::new(&verifier);
            client_messages("pw", &mut server);
            let err = server.client_final(body).unwrap_err();
            assert!(matches!(err, ScramError::Malformed(_)), "{err:?}");
            assert!(
                err.to_string().contains(expected),
                "{err} should contain {expected:?}"
            );
        }
        // A proof that is not base64, or not 32 bytes, with the right nonce.
        for (proof, expected) in [("!!!!", "not valid base64"), ("AAAA", "3 bytes instead of 32")] {
            let mut server = ScramExchange::new(&verifier);
            let (_, client_final) = client_messages("pw", &mut server);
            let client_final = String::from_utf8(client_final).unwrap();
            let nonce = client_final.split(',').nth(1).unwrap();
            let err = server
                .client_final(format!("c=biws,{nonce},p={proof}").as_bytes())
                .unwrap_err();
            assert!(matches!(err, ScramError::Malformed(_)), "{err:?}");
            assert!(
                err.to_string().contains(expected),
                "{err} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn rejects_messages_out_of_sequence() {
        let verifier = ScramVerifier::from_password("pw");
        // client-final before client-first.
        let err = ScramExchange::new(&verifier)
            .client_final(b"c=biws,r=x,p=AAAA")
            .unwrap_err();
        assert!(matches!(err, ScramError::OutOfSequence), "{err:?}");
        // A second client-first.
        let mut server = ScramExchange::new(&verifier);
        let body = initial_response(MECHANISM, b"n,,n=,r=abc");
        server.client_first(&body).unwrap();
        assert!(matches!(
            server.client_first(&body),
            Err(ScramError::OutOfSequence)
        ));
        // Nothing after a success, nor after a failure.
        let mut server = ScramExchange::new(&verifier);
        let (mut client, client_final) = client_messages("pw", &mut server);
        let server_final = server.client_final(&client_final).unwrap();
        client.finish(&server_final).unwrap();
        assert!(matches!(
            server.client_final(&client_final),
            Err(ScramError::OutOfSequence)
        ));
        let mut server = ScramExchange::new(&verifier);
        let (_, client_final) = client_messages("wrong", &mut server);
        assert!(matches!(
            server.client_final(&client_final),
            Err(ScramError::WrongPassword)
        ));
        assert!(matches!(
            server.client_final(&client_final),
            Err(ScramError::OutOfSequence)
        ));
    }

    #[test]
    fn debug_does_not_show_keys() {
        let verifier = ScramVerifier::with_salt("pw", b"salt".to_vec(), 1);
        let debug = format!("{verifier:?}");
        assert_eq!(debug, "ScramVerifier { salt: \"c2FsdA==\", iterations: 1, .. }");
    }

    #[test]
    fn compares_in_constant_time() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
