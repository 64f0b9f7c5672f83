//! SCRAM-SHA-256 (RFC 5802, RFC 7677) for the PostgreSQL door: a token proves itself without
//! travelling, so a client may log in without TLS.
//!
//! ```text
//!  token value (from the environment) ─► PBKDF2(value, the process's salt, 4096) ─► Keys
//!  client-first "n,,n=user,r=CN" ─► server-first "r=CN SN,s=salt,i=4096"
//!  client-final "c=biws,r=CN SN,p=proof" ─► the token whose StoredKey = H(proof ⊕ HMAC(StoredKey,
//!  auth message)) ─► server-final "v=HMAC(ServerKey, auth message)"
//! ```
//!
//! Any user name logs in with a token, as with a cleartext password, so the proof is checked
//! against every token with keys; one salt for the process makes the server-first message the
//! same whichever token the client holds. A token given only as a SHA-256 digest has no keys
//! (SCRAM needs the value): it logs in under TLS, with a cleartext password. Pure.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// PBKDF2 iterations, as PostgreSQL's default `scram_iterations`.
pub const ITERATIONS: u32 = 4096;

/// What the server keeps of a token for SCRAM.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    stored: [u8; 32],
    server: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC takes a key of any length")
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block (32 bytes), as SCRAM's `Hi`.
fn salted(secret: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend(1u32.to_be_bytes());
    let mut u = hmac(secret, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(secret, &u);
        for (o, b) in out.iter_mut().zip(u) {
            *o ^= b;
        }
    }
    out
}

impl Keys {
    /// The keys of a token's value under `salt`.
    pub fn derive(secret: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted(secret.as_bytes(), salt, iterations);
        let client = hmac(&salted, b"Client Key");
        Self {
            stored: Sha256::digest(client).into(),
            server: hmac(&salted, b"Server Key"),
        }
    }

    /// Whether `proof` was made with this token for `auth_message` (constant time).
    fn proves(&self, auth_message: &[u8], proof: &[u8; 32]) -> bool {
        let signature = hmac(&self.stored, auth_message);
        let mut client = *proof;
        for (c, s) in client.iter_mut().zip(signature) {
            *c ^= s;
        }
        let stored: [u8; 32] = Sha256::digest(client).into();
        bool::from(stored.ct_eq(&self.stored))
    }

    /// The server's signature of `auth_message`, which proves the server knew the token.
    fn signature(&self, auth_message: &[u8]) -> [u8; 32] {
        hmac(&self.server, auth_message)
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("the nonce does not match")]
    Nonce,
    #[error("no token matches the proof")]
    Unknown,
}

/// An exchange after the server's first message: what the final message is checked against.
#[derive(Debug, Clone)]
pub struct Exchange {
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Answers a client's first message (`n,,n=<user>,r=<nonce>`) with the server's first message,
/// adding `server_nonce` (printable, without commas) to the client's.
pub fn first(
    client_first: &[u8],
    server_nonce: &str,
    salt: &[u8],
    iterations: u32,
) -> Result<Exchange, Error> {
    let text = std::str::from_utf8(client_first).map_err(|_| Error::Malformed("not UTF-8"))?;
    // GS2 header: `n` (no channel binding) or `y` (the client could, the server does not offer
    // it); `p=` asks for it.
    let (binding, rest) = text
        .split_once(',')
        .ok_or(Error::Malformed("no GS2 header"))?;
    match binding {
        "n" | "y" => {}
        b if b.starts_with("p=") => return Err(Error::ChannelBinding),
        _ => return Err(Error::Malformed("GS2 header")),
    }
    let (_authzid, bare) = rest
        .split_once(',')
        .ok_or(Error::Malformed("no GS2 header"))?;
    let client_nonce = bare
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty())
        .ok_or(Error::Malformed("no nonce"))?;
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(salt));
    Ok(Exchange {
        client_first_bare: bare.to_owned(),
        server_first,
        nonce,
    })
}

impl Exchange {
    /// The server's first message.
    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks the client's final message (`c=biws,r=<nonce>,p=<proof>`) against `tokens`: the
    /// index of the token that made the proof, and the server's final message (`v=...`).
    pub fn finish(&self, client_final: &[u8], tokens: &[&Keys]) -> Result<(usize, String), Error> {
        let text = std::str::from_utf8(client_final).map_err(|_| Error::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(Error::Malformed("no proof"))?;
        let nonce = without_proof
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or(Error::Malformed("no nonce"))?;
        if nonce != self.nonce {
            return Err(Error::Nonce);
        }
        let binding = without_proof
            .split(',')
            .find_map(|a| a.strip_prefix("c="))
            .ok_or(Error::Malformed("no channel binding attribute"))?;
        // `biws` is base64 of `n,,`; `eSws` of `y,,`.
        if binding != "biws" && binding != "eSws" {
            return Err(Error::ChannelBinding);
        }
        let proof: [u8; 32] = STANDARD
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(Error::Malformed("proof"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        // Every token is tried, whatever matched first.
        let mut found = None;
        for (i, keys) in tokens.iter().enumerate() {
            if keys.proves(auth_message.as_bytes(), &proof) {
                found = found.or(Some(i));
            }
        }
        let i = found.ok_or(Error::Unknown)?;
        let signature = tokens[i].signature(auth_message.as_bytes());
        Ok((i, format!("v={}", STANDARD.encode(signature))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange: user `user`, password `pencil`.
    #[test]
    fn the_rfc_7677_exchange_is_answered_exactly() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = Keys::derive("pencil", &salt, 4096);
        let exchange = first(
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            &salt,
            4096,
        )
        .unwrap();
        assert_eq!(
            exchange.server_first(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let other = Keys::derive("not the password", &salt, 4096);
        let (i, server_final) = exchange
            .finish(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                &[&other, &keys],
            )
            .unwrap();
        assert_eq!(i, 1);
        assert_eq!(
            server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // A wrong proof, a replayed nonce and channel binding are refused.
        assert_eq!(
            exchange
                .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", &[&other])
                .unwrap_err(),
            Error::Unknown
        );
        assert_eq!(
            exchange
                .finish(
                    b"c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                    &[&keys]
                )
                .unwrap_err(),
            Error::Nonce
        );
        assert_eq!(
            first(b"p=tls-server-end-point,,n=user,r=x", "y", &salt, 4096).unwrap_err(),
            Error::ChannelBinding
        );
        assert!(matches!(
            first(b"garbage", "y", &salt, 4096),
            Err(Error::Malformed(_))
        ));
    }
}
