//! Lock tokens: minted and checked here, once, for every backend.
//!
//! # Format
//!
//! A token is `lk1.` followed by unpadded URL-safe base64 of 56 bytes:
//!
//! ```text
//! fence (8, big-endian) | nonce (16, random) | mac (32)
//! mac = HMAC-SHA256(secret, "lockd/token/v1" | len(object) | object | len(owner) | owner | fence | nonce)
//! ```
//!
//! * The 128-bit nonce comes from the operating system's CSPRNG, so tokens cannot be guessed.
//! * The MAC binds the token to its object, owner and fence under a secret only lockd (and DFS
//!   storage nodes holding a [`TokenVerifier`]) know, so tokens cannot be forged or moved.
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
use crate::id::{ObjectId, OwnerId};

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "lk1.";
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
/// Parsing checks the format only; whether the token is the holder's is the backend's question
/// (by [`TokenDigest`]) and whether it is authentic is [`TokenVerifier`]'s.
/// `Debug` and `Display` show a short fingerprint, never the token.
#[derive(Clone)]
pub struct LockToken {
    raw: Box<str>,
    fence: Fence,
    nonce: [u8; NONCE_LEN],
    mac: [u8; MAC_LEN],
}

impl LockToken {
    /// Parses a token string, refusing anything not in the `lk1.` format with
    /// [`LockError::InvalidToken`].
    pub fn parse(raw: &str) -> Result<Self, LockError> {
        let body = raw.strip_prefix(PREFIX).ok_or(LockError::InvalidToken {
            reason: "does not start with lk1.",
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

    /// Finishes a token once the backend has decided the fence.
    pub fn seal(
        &self,
        pending: PendingToken,
        object: &ObjectId,
        owner: &OwnerId,
        fence: Fence,
    ) -> LockToken {
        let mac = mac_for(&self.secret, object, owner, fence, &pending.nonce);
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
    owner: &OwnerId,
    fence: Fence,
    nonce: &[u8; NONCE_LEN],
) -> [u8; MAC_LEN] {
    let mut mac = secret.mac();
    mac.update(b"lockd/token/v1");
    for part in [object.as_str().as_bytes(), owner.as_str().as_bytes()] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac.update(&fence.0.to_be_bytes());
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

/// Checks offline that a token was minted by lockd for an object, owner and fence.
///
/// A DFS storage node configured with lockd's secret uses it to refuse writes that carry a
/// forged token, or an authentic token with a fence older than the newest it has seen for the
/// object (a fencing token in the sense of Chubby's sequencers), without asking lockd.
///
/// ```
/// use lockcore::{Fence, ObjectId, OwnerId, TokenIssuer};
/// let issuer = TokenIssuer::random();
/// let (object, owner) = (ObjectId::new("f").unwrap(), OwnerId::new("node-1").unwrap());
/// let token = issuer.seal(issuer.prepare(), &object, &owner, Fence(42));
/// let verifier = issuer.verifier();
/// assert_eq!(verifier.verify(&object, &owner, token.expose()).unwrap(), Fence(42));
/// let other = ObjectId::new("g").unwrap();
/// assert!(verifier.verify(&other, &owner, token.expose()).is_err());
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

    /// Returns the token's fence if it is authentic for `object` and `owner`; the MAC is compared
    /// in constant time. A malformed token is [`LockError::InvalidToken`]; a well-formed token not
    /// minted for these names is [`LockError::TokenMismatch`].
    pub fn verify(
        &self,
        object: &ObjectId,
        owner: &OwnerId,
        raw: &str,
    ) -> Result<Fence, LockError> {
        let token = LockToken::parse(raw)?;
        self.verify_parsed(object, owner, &token)?;
        Ok(token.fence)
    }

    /// Like [`TokenVerifier::verify`] for an already parsed token.
    pub fn verify_parsed(
        &self,
        object: &ObjectId,
        owner: &OwnerId,
        token: &LockToken,
    ) -> Result<(), LockError> {
        let expected = mac_for(&self.secret, object, owner, token.fence, &token.nonce);
        if bool::from(expected.ct_eq(&token.mac)) {
            Ok(())
        } else {
            Err(LockError::TokenMismatch {
                object: object.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (ObjectId, OwnerId) {
        (
            ObjectId::new("/vol/file").expect("valid"),
            OwnerId::new("client-1").expect("valid"),
        )
    }

    #[test]
    fn a_sealed_token_round_trips_through_its_string_form() {
        let issuer = TokenIssuer::random();
        let (object, owner) = names();
        let pending = issuer.prepare();
        let stored = pending.digest();
        let token = issuer.seal(pending, &object, &owner, Fence(7));
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
        let (object, owner) = names();
        let a = issuer.seal(issuer.prepare(), &object, &owner, Fence(1));
        let b = issuer.seal(issuer.prepare(), &object, &owner, Fence(1));
        assert_ne!(a, b);
        assert!(!a.digest().ct_eq(&b.digest()));
    }

    #[test]
    fn malformed_tokens_are_invalid() {
        for raw in ["", "lk1.", "lk2.AAAA", "garbage", &"lk1.!".repeat(20)] {
            assert!(matches!(
                LockToken::parse(raw),
                Err(LockError::InvalidToken { .. })
            ));
        }
    }

    #[test]
    fn verifier_refuses_tokens_for_other_names_fences_or_secrets() {
        let issuer = TokenIssuer::random();
        let (object, owner) = names();
        let token = issuer.seal(issuer.prepare(), &object, &owner, Fence(9));
        let verifier = issuer.verifier();
        assert_eq!(
            verifier.verify(&object, &owner, token.expose()),
            Ok(Fence(9))
        );
        let other_owner = OwnerId::new("client-2").expect("valid");
        assert!(verifier
            .verify(&object, &other_owner, token.expose())
            .is_err());
        // Tampering with the fence breaks the MAC.
        let mut bytes = URL_SAFE_NO_PAD
            .decode(&token.expose()[PREFIX.len()..])
            .expect("base64");
        bytes[7] ^= 1;
        let tampered = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        assert!(matches!(
            verifier.verify(&object, &owner, &tampered),
            Err(LockError::TokenMismatch { .. })
        ));
        let stranger = TokenIssuer::random().verifier();
        assert!(stranger.verify(&object, &owner, token.expose()).is_err());
    }

    #[test]
    fn debug_output_hides_secrets_and_tokens() {
        let issuer = TokenIssuer::random();
        let (object, owner) = names();
        let token = issuer.seal(issuer.prepare(), &object, &owner, Fence(3));
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
