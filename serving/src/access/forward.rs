//! Requests one process forwards to another, signed with the cluster token instead of
//! carrying the user's.
//!
//! ```text
//!  arriving request ─► authorized as token T ─► forward: sign(method, path, body, time, T)
//!      ─► x-tandem-forwarded: v1.<time>.<hex T>.<hex mac> ─► receiver: verify ─► T's scope
//! ```

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Denied;

/// Signs requests one Tandem process forwards to another (job requests go to the holder of the
/// scheduler lease, at an address read from the store), with the cluster token as the key:
/// the user's bearer token is never sent on, so whoever can write an address into the store
/// cannot collect tokens. The signature covers the method, path, body, time and the name of
/// the token that authorized the request where it arrived; the receiver allows what that token
/// may do. Pure.
#[derive(Clone)]
pub struct ForwardKey {
    key: Arc<[u8]>,
}

impl fmt::Debug for ForwardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ForwardKey(<hidden>)")
    }
}

/// How far a forwarded request's time may be from the receiver's clock.
pub const FORWARD_SKEW_MS: i64 = 60_000;

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bytes_of_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl ForwardKey {
    /// The key of a cluster whose processes share `secret` (the cluster token).
    pub fn new(secret: &str) -> Self {
        Self {
            key: Sha256::digest(secret.as_bytes()).to_vec().into(),
        }
    }

    fn mac(&self, method: &str, target: &str, at_ms: i64, token: &str, body: &[u8]) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| {
            // HMAC takes keys of any length.
            unreachable!("an HMAC key of any length is valid")
        });
        let body_digest: [u8; 32] = Sha256::digest(body).into();
        for part in [
            "tandem-forward-v1".as_bytes(),
            method.as_bytes(),
            target.as_bytes(),
            at_ms.to_string().as_bytes(),
            token.as_bytes(),
            &body_digest,
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// The header value for a request (`target`: path and query) authorized by `token` here.
    pub fn sign(
        &self,
        method: &str,
        target: &str,
        at_ms: i64,
        token: Option<&str>,
        body: &[u8],
    ) -> String {
        let token = token.unwrap_or_default();
        format!(
            "v1.{at_ms}.{}.{}",
            hex_of(token.as_bytes()),
            hex_of(&self.mac(method, target, at_ms, token, body))
        )
    }

    /// The name of the token that authorized a forwarded request (`None`: none was needed
    /// where it arrived), if `header` signs exactly this request and is fresh at `now_ms`.
    pub fn verify(
        &self,
        header: &str,
        method: &str,
        target: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Result<Option<String>, Denied> {
        let mut parts = header.split('.');
        let (Some("v1"), Some(at), Some(token), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Denied::Unknown);
        };
        let at_ms: i64 = at.parse().map_err(|_| Denied::Unknown)?;
        if now_ms.abs_diff(at_ms) > FORWARD_SKEW_MS.unsigned_abs() {
            return Err(Denied::Unknown);
        }
        let token = bytes_of_hex(token)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(Denied::Unknown)?;
        let presented = bytes_of_hex(mac).ok_or(Denied::Unknown)?;
        let expected = self.mac(method, target, at_ms, &token, body);
        if !bool::from(expected.ct_eq(&presented)) {
            return Err(Denied::Unknown);
        }
        Ok((!token.is_empty()).then_some(token))
    }
}
