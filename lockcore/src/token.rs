//! Lock tokens: minted and checked here, once, for every backend.
//!
//! # Format
//!
//! A token is `lk2.` followed by unpadded URL-safe base64 of 56 bytes:
//!
//! ```text
//! fence (8, big-endian) | nonce (16) | mac (32)
//! mac = HMAC-SHA256(secret, "lockd/token/v2" | len(object) | object | fence | nonce)
//! ```
//!
//! * The 128-bit nonce comes from the operating system's CSPRNG, so tokens cannot be guessed; or,
//!   for an acquire that carries a request id, from an HMAC of the request under the secret (see
//!   [`TokenIssuer::prepare_for`]), so a retried request gets the same token back.
//! * The MAC binds the token to its object and fence under a secret only lockd (and DFS storage
//!   nodes holding a [`TokenVerifier`]) know, so tokens cannot be forged, altered or moved to
//!   another object. lockd checks the MAC of every token presented to release, renew or
//!   validate, in constant time, before the backend sees it ([`TokenIssuer::check`]): a token
//!   with a changed MAC, a changed fence or another object's name is refused as
//!   [`LockError::InvalidToken`].
//! * The owner is not part of the MAC: it is a label for operators, chosen by the caller, not a
//!   credential. Everything a token proves is "the holder of grant `fence` on `object`". (Version
//!   1 tokens, `lk1.`, bound the owner too, which made them impossible to check from a request
//!   that names only the object; they are refused as malformed.)
//! * Backends never store a token. They store its [`TokenDigest`], a SHA-256 over the token's
//!   nonce: the digest is known before the fence is (so Redis and Postgres decide the fence and
//!   store the digest in one round trip), and since the nonce is the only part of a token that is
//!   neither public nor derived from it, knowing the digest of the nonce does not let anyone
//!   rebuild the token. Digests are compared in constant time in process; where a backend compares
//!   them inside Redis or Postgres, the timing of comparing two SHA-256 outputs reveals nothing
//!   about the nonce.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::LockError;
use crate::fence::Fence;
use crate::id::{ObjectId, OwnerId, RequestId};
use crate::mode::{LockScope, LockSpec};

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "lk2.";
const FENCE_LEN: usize = 8;
const NONCE_LEN: usize = 16;
const MAC_LEN: usize = 32;
const BODY_LEN: usize = FENCE_LEN + NONCE_LEN + MAC_LEN;
/// Length in characters of every well-formed token.
pub const TOKEN_LEN: usize = PREFIX.len() + (BODY_LEN * 4).div_ceil(3);
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// The key tokens are signed with. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct TokenSecret(Arc<[u8]>);

impl TokenSecret {
    /// Wraps a secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, LockError> {
        let bytes = bytes.as_ref();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(LockError::invalid_argument(
                "token_secret",
                format!("must be at least {MIN_SECRET_LEN} bytes"),
            ));
        }
        Ok(Self(Arc::from(bytes)))
    }

    /// A fresh random secret. Tokens signed with it die with the process.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(Arc::from(&bytes[..]))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

/// A SHA-256 digest identifying a token; what backends store instead of the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Rebuilds a digest a backend stored as bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LockError> {
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| LockError::Internal("stored token digest is not 32 bytes".into()))?;
        Ok(Self(array))
    }

    /// Lower-case hex, for backends that store text.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses [`TokenDigest::to_hex`] output.
    pub fn from_hex(text: &str) -> Result<Self, LockError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out)
            .map_err(|_| LockError::Internal("stored token digest is not 64 hex digits".into()))?;
        Ok(Self(out))
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({}..)", &hex(&self.0[..4]))
    }
}

/// Lower-case hex. Every backend operation encodes a digest, so this is on the hot path.
fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn nonce_digest(nonce: &[u8; NONCE_LEN]) -> TokenDigest {
    let mut hasher = Sha256::new();
    hasher.update(b"lockd/token-digest/v1");
    hasher.update(nonce);
    TokenDigest(hasher.finalize().into())
}

/// A lock token: the proof of ownership a grant returns and a release must present.
///
/// Parsing checks the format only; whether it is authentic is [`TokenVerifier`]'s question (asked
/// by [`TokenIssuer::check`] before any backend sees the token), and whether it is the current
/// holder's is the backend's (by [`TokenDigest`] and fence).
/// `Debug` and `Display` show a short fingerprint, never the token.
#[derive(Clone)]
pub struct LockToken {
    raw: Box<str>,
    fence: Fence,
    nonce: [u8; NONCE_LEN],
    mac: [u8; MAC_LEN],
}

impl LockToken {
    /// Parses a token string, refusing anything not in the `lk2.` format with
    /// [`LockError::InvalidToken`].
    pub fn parse(raw: &str) -> Result<Self, LockError> {
        let body = raw.strip_prefix(PREFIX).ok_or(LockError::InvalidToken {
            reason: "does not start with lk2.",
        })?;
        if raw.len() != TOKEN_LEN {
            return Err(LockError::InvalidToken {
                reason: "has the wrong length",
            });
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| LockError::InvalidToken {
                reason: "is not URL-safe base64",
            })?;
        if bytes.len() != BODY_LEN {
            return Err(LockError::InvalidToken {
                reason: "has the wrong length",
            });
        }
        let mut fence = [0u8; FENCE_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        let mut mac = [0u8; MAC_LEN];
        fence.copy_from_slice(&bytes[..FENCE_LEN]);
        nonce.copy_from_slice(&bytes[FENCE_LEN..FENCE_LEN + NONCE_LEN]);
        mac.copy_from_slice(&bytes[FENCE_LEN + NONCE_LEN..]);
        Ok(Self {
            raw: raw.into(),
            fence: Fence(u64::from_be_bytes(fence)),
            nonce,
            mac,
        })
    }

    /// The token as sent over the wire. Treat it like a password.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The fence this token claims (authentic only once verified or matched by digest).
    pub fn fence(&self) -> Fence {
        self.fence
    }

    /// The digest a backend stores and compares.
    pub fn digest(&self) -> TokenDigest {
        nonce_digest(&self.nonce)
    }

    /// A short fingerprint for logs: identifies the token, cannot rebuild it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.raw)
    }
}

/// A short fingerprint of any token-like string, for logging refused requests.
pub fn fingerprint(raw: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"lockd/token-fingerprint/v1");
    hasher.update(raw.as_bytes());
    let sum: [u8; 32] = hasher.finalize().into();
    hex(&sum[..4])
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LockToken(fence={}, fp={})",
            self.fence,
            self.fingerprint()
        )
    }
}

impl PartialEq for LockToken {
    fn eq(&self, other: &Self) -> bool {
        self.raw.as_bytes().ct_eq(other.raw.as_bytes()).into()
    }
}

impl Eq for LockToken {}

impl serde::Serialize for LockToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> serde::Deserialize<'de> for LockToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        LockToken::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The random half of a token, drawn before the backend decides the fence.
///
/// Backends store [`PendingToken::digest`] in the same atomic step that decides the fence, then
/// call [`TokenIssuer::seal`] with that fence to obtain the token to hand out.
#[derive(Debug)]
pub struct PendingToken {
    nonce: [u8; NONCE_LEN],
}

impl PendingToken {
    /// The digest the backend stores; equal to the sealed token's [`LockToken::digest`].
    pub fn digest(&self) -> TokenDigest {
        nonce_digest(&self.nonce)
    }
}

/// Mints tokens. Every backend holds one (cheap to clone); they share it with nothing else.
#[derive(Clone, Debug)]
pub struct TokenIssuer {
    secret: TokenSecret,
}

impl TokenIssuer {
    /// An issuer signing with `secret`.
    pub fn new(secret: TokenSecret) -> Self {
        Self { secret }
    }

    /// An issuer with a random secret (tests, single-process embedding).
    pub fn random() -> Self {
        Self::new(TokenSecret::random())
    }

    /// Draws a fresh nonce for a grant about to happen.
    pub fn prepare(&self) -> PendingToken {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        PendingToken { nonce }
    }

    /// The nonce for one object of a request: random without a request id; with one, an HMAC
    /// of the object, its mode, the owner and the request id under the secret.
    ///
    /// A retry of the same request (same objects, modes, owner and request id) therefore draws
    /// the same nonces, and their digests find the grants the first attempt made: the backend
    /// answers with those grants instead of second ones, and [`TokenIssuer::seal`] rebuilds the
    /// same tokens. Nobody without the secret can compute a nonce from the request id, but
    /// anyone who can send lockd the same request gets the tokens back: a request id is as
    /// secret as the tokens.
    pub fn prepare_for(
        &self,
        spec: &LockSpec,
        owner: &OwnerId,
        request_id: Option<&RequestId>,
    ) -> PendingToken {
        let Some(request_id) = request_id else {
            return self.prepare();
        };
        let mut mac = self.secret.mac();
        mac.update(b"lockd/request-nonce/v2");
        // The scope is bound only when it is not the default, so that object-scope requests
        // derive the nonces they derived before scopes existed.
        let scope: &[u8] = match spec.scope {
            LockScope::Object => b"",
            LockScope::Subtree => b"subtree",
        };
        for part in [
            spec.object.as_str().as_bytes(),
            spec.mode.as_str().as_bytes(),
            owner.as_str().as_bytes(),
            request_id.as_str().as_bytes(),
            scope,
        ] {
            if part.is_empty() {
                continue;
            }
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        let full: [u8; MAC_LEN] = mac.finalize().into_bytes().into();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&full[..NONCE_LEN]);
        PendingToken { nonce }
    }

    /// Refuses, as [`LockError::InvalidToken`], a token this issuer did not mint for `object`:
    /// a changed MAC, a changed fence, another object's token or another secret's. The MAC is
    /// compared in constant time. Backends call it before anything else in release, renew and
    /// validate.
    pub fn check(&self, object: &ObjectId, token: &LockToken) -> Result<(), LockError> {
        verify(&self.secret, object, token)
    }

    /// Finishes a token once the backend has decided the fence.
    pub fn seal(&self, pending: PendingToken, object: &ObjectId, fence: Fence) -> LockToken {
        let mac = mac_for(&self.secret, object, fence, &pending.nonce);
        let mut body = [0u8; BODY_LEN];
        body[..FENCE_LEN].copy_from_slice(&fence.0.to_be_bytes());
        body[FENCE_LEN..FENCE_LEN + NONCE_LEN].copy_from_slice(&pending.nonce);
        body[FENCE_LEN + NONCE_LEN..].copy_from_slice(&mac);
        let mut raw = String::with_capacity(TOKEN_LEN);
        raw.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(body, &mut raw);
        LockToken {
            raw: raw.into_boxed_str(),
            fence,
            nonce: pending.nonce,
            mac,
        }
    }

    /// The verifier for tokens this issuer mints.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier {
            secret: self.secret.clone(),
        }
    }
}

fn mac_for(
    secret: &TokenSecret,
    object: &ObjectId,
    fence: Fence,
    nonce: &[u8; NONCE_LEN],
) -> [u8; MAC_LEN] {
    let mut mac = secret.mac();
    mac.update(b"lockd/token/v2");
    let name = object.as_str().as_bytes();
    mac.update(&(name.len() as u32).to_be_bytes());
    mac.update(name);
    mac.update(&fence.0.to_be_bytes());
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

fn verify(secret: &TokenSecret, object: &ObjectId, token: &LockToken) -> Result<(), LockError> {
    let expected = mac_for(secret, object, token.fence, &token.nonce);
    if bool::from(expected.ct_eq(&token.mac)) {
        Ok(())
    } else {
        Err(LockError::InvalidToken {
            reason: "was not issued for this object by this lock service",
        })
    }
}

/// Checks offline that a token was minted by lockd for an object, and reads its fence.
///
/// A DFS storage node configured with lockd's secret uses it to refuse writes that carry a
/// forged token, or an authentic token with a fence older than the newest it has seen for the
/// object (a fencing token in the sense of Chubby's sequencers), without asking lockd.
///
/// ```
/// use lockcore::{Fence, ObjectId, TokenIssuer};
/// let issuer = TokenIssuer::random();
/// let object = ObjectId::new("f").unwrap();
/// let token = issuer.seal(issuer.prepare(), &object, Fence(42));
/// let verifier = issuer.verifier();
/// assert_eq!(verifier.verify(&object, token.expose()).unwrap(), Fence(42));
/// let other = ObjectId::new("g").unwrap();
/// assert!(verifier.verify(&other, token.expose()).is_err());
/// ```
#[derive(Clone, Debug)]
pub struct TokenVerifier {
    secret: TokenSecret,
}

impl TokenVerifier {
    /// A verifier for tokens signed with `secret`.
    pub fn new(secret: TokenSecret) -> Self {
        Self { secret }
    }

    /// Returns the token's fence if it is authentic for `object`; the MAC is compared in
    /// constant time. A malformed token, or a well-formed one not minted for `object` under this
    /// secret, is [`LockError::InvalidToken`].
    pub fn verify(&self, object: &ObjectId, raw: &str) -> Result<Fence, LockError> {
        let token = LockToken::parse(raw)?;
        self.verify_parsed(object, &token)?;
        Ok(token.fence)
    }

    /// Like [`TokenVerifier::verify`] for an already parsed token.
    pub fn verify_parsed(&self, object: &ObjectId, token: &LockToken) -> Result<(), LockError> {
        verify(&self.secret, object, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> ObjectId {
        ObjectId::new("/vol/file").expect("valid")
    }

    /// The token with one byte of its decoded body changed.
    fn tampered(token: &LockToken, byte: usize) -> String {
        let mut bytes = URL_SAFE_NO_PAD
            .decode(&token.expose()[PREFIX.len()..])
            .expect("base64");
        bytes[byte] ^= 1;
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    #[test]
    fn a_sealed_token_round_trips_through_its_string_form() {
        let issuer = TokenIssuer::random();
        let object = object();
        let pending = issuer.prepare();
        let stored = pending.digest();
        let token = issuer.seal(pending, &object, Fence(7));
        assert_eq!(token.expose().len(), TOKEN_LEN);
        let parsed = LockToken::parse(token.expose()).expect("well-formed");
        assert_eq!(parsed.fence(), Fence(7));
        assert!(parsed.digest().ct_eq(&stored));
        assert_eq!(parsed, token);
        assert!(token
            .expose()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    }

    #[test]
    fn tokens_are_unique_even_for_the_same_grant() {
        let issuer = TokenIssuer::random();
        let object = object();
        let a = issuer.seal(issuer.prepare(), &object, Fence(1));
        let b = issuer.seal(issuer.prepare(), &object, Fence(1));
        assert_ne!(a, b);
        assert!(!a.digest().ct_eq(&b.digest()));
    }

    #[test]
    fn malformed_tokens_are_invalid() {
        for raw in ["", "lk2.", "lk2.AAAA", "garbage", &"lk2.!".repeat(20)] {
            assert!(matches!(
                LockToken::parse(raw),
                Err(LockError::InvalidToken { .. })
            ));
        }
    }

    #[test]
    fn verifier_refuses_tokens_for_other_objects_fences_macs_or_secrets() {
        let issuer = TokenIssuer::random();
        let object = object();
        let token = issuer.seal(issuer.prepare(), &object, Fence(9));
        let verifier = issuer.verifier();
        assert_eq!(verifier.verify(&object, token.expose()), Ok(Fence(9)));
        assert_eq!(issuer.check(&object, &token), Ok(()));
        let other = ObjectId::new("/vol/other").expect("valid");
        let invalid = |result: Result<(), LockError>| {
            assert!(
                matches!(result, Err(LockError::InvalidToken { .. })),
                "{result:?}"
            )
        };
        invalid(issuer.check(&other, &token));
        // Changing the fence (bytes 0..8), the nonce (8..24) or the MAC (24..56) breaks the MAC.
        for byte in [7, 8, 23, 24, 40, BODY_LEN - 1] {
            let changed = LockToken::parse(&tampered(&token, byte)).expect("still well-formed");
            invalid(issuer.check(&object, &changed));
        }
        let stranger = TokenIssuer::random();
        invalid(stranger.check(&object, &token));
        assert!(stranger.verifier().verify(&object, token.expose()).is_err());
    }

    #[test]
    fn version_1_tokens_are_refused_as_malformed() {
        let issuer = TokenIssuer::random();
        let token = issuer.seal(issuer.prepare(), &object(), Fence(9));
        let v1 = token.expose().replacen(PREFIX, "lk1.", 1);
        assert!(matches!(
            LockToken::parse(&v1),
            Err(LockError::InvalidToken { .. })
        ));
    }

    #[test]
    fn a_request_id_draws_the_same_nonce_for_the_same_request_only() {
        use crate::id::{OwnerId, RequestId};
        use crate::mode::{LockMode, LockSpec};
        let issuer = TokenIssuer::random();
        let owner = OwnerId::new("client-1").expect("valid");
        let other_owner = OwnerId::new("client-2").expect("valid");
        let id = RequestId::new("0123456789abcdef0123").expect("valid");
        let other_id = RequestId::new("0123456789abcdef0124").expect("valid");
        let spec = LockSpec::exclusive(object());
        let digest = |issuer: &TokenIssuer, spec: &LockSpec, owner: &OwnerId, id| {
            issuer.prepare_for(spec, owner, id).digest()
        };
        let first = digest(&issuer, &spec, &owner, Some(&id));
        assert!(first.ct_eq(&digest(&issuer, &spec, &owner, Some(&id))));
        assert!(!first.ct_eq(&digest(&issuer, &spec, &other_owner, Some(&id))));
        assert!(!first.ct_eq(&digest(&issuer, &spec, &owner, Some(&other_id))));
        let shared = LockSpec::new(object(), LockMode::Shared);
        assert!(!first.ct_eq(&digest(&issuer, &shared, &owner, Some(&id))));
        // Another secret derives another nonce: request ids reveal nothing without the secret.
        assert!(!first.ct_eq(&digest(&TokenIssuer::random(), &spec, &owner, Some(&id))));
        // Without a request id every attempt is fresh.
        assert!(!digest(&issuer, &spec, &owner, None).ct_eq(&digest(&issuer, &spec, &owner, None)));
    }

    #[test]
    fn debug_output_hides_secrets_and_tokens() {
        let issuer = TokenIssuer::random();
        let token = issuer.seal(issuer.prepare(), &object(), Fence(3));
        let shown = format!("{token:?} {issuer:?}");
        assert!(!shown.contains(token.expose()));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn digests_round_trip_through_hex() {
        let issuer = TokenIssuer::random();
        let digest = issuer.prepare().digest();
        let back = TokenDigest::from_hex(&digest.to_hex()).expect("hex");
        assert!(back.ct_eq(&digest));
        assert!(TokenDigest::from_hex("zz").is_err());
    }
}
