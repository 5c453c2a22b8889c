//! API keys: `authorization: Bearer KEY` metadata, checked before a `Locks` call runs.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::server::Hooks;
use crate::status::refusal;

/// Which callers a server accepts.
///
/// * [`Auth::none`]: everyone (lockd allows it only on loopback, or with
///   `--insecure-no-auth`; that rule is the server's to apply);
/// * [`Auth::api_keys`]: callers presenting one of the keys, kept as SHA-256 digests (with
///   lockd's `lockd/api-key/v1` prefix, as on HTTP) and compared in constant time;
/// * [`Auth::check`]: callers a closure accepts.
///
/// `Debug` never shows a key.
#[derive(Clone)]
pub struct Auth {
    check: Option<Arc<KeyCheck>>,
}

/// A caller-supplied key check: gets the presented bearer key, or `None` when there is none.
pub type KeyCheck = dyn Fn(Option<&str>) -> bool + Send + Sync;

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.check.is_some())
            .finish()
    }
}

impl Auth {
    /// Accepts every caller.
    pub fn none() -> Self {
        Self { check: None }
    }

    /// Accepts callers presenting one of `keys`; no keys at all is [`Auth::none`].
    pub fn api_keys<K: AsRef<[u8]>>(keys: &[K]) -> Self {
        if keys.is_empty() {
            return Self::none();
        }
        Self::digests(keys.iter().map(|k| key_digest(k.as_ref())).collect())
    }

    /// Accepts callers whose key's [`key_digest`] is one of `digests`.
    pub fn digests(digests: Vec<[u8; 32]>) -> Self {
        Self::check(move |presented| {
            let Some(presented) = presented else {
                return false;
            };
            let presented = key_digest(presented.as_bytes());
            let mut found = subtle::Choice::from(0);
            for key in &digests {
                found |= key.ct_eq(&presented);
            }
            found.into()
        })
    }

    /// Accepts callers `check` accepts; it gets the presented bearer key, if any.
    pub fn check(check: impl Fn(Option<&str>) -> bool + Send + Sync + 'static) -> Self {
        Self {
            check: Some(Arc::new(check)),
        }
    }

    /// Whether a key is required.
    pub fn enabled(&self) -> bool {
        self.check.is_some()
    }

    /// Whether a caller whose `authorization` value is `header` is accepted.
    pub fn accepts(&self, header: Option<&str>) -> bool {
        match &self.check {
            None => true,
            Some(check) => check(header.and_then(bearer_key)),
        }
    }
}

/// The key of an `authorization: Bearer KEY` value (scheme case-insensitive).
fn bearer_key(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// The SHA-256 digest lockd keeps of an API key: `SHA-256("lockd/api-key/v1" || key)`.
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"lockd/api-key/v1");
    hasher.update(key);
    hasher.finalize().into()
}

/// The interceptor that refuses `Locks` calls without an accepted key as `UNAUTHENTICATED`
/// (lockd code `unauthenticated`), logs them on the `lockd::audit` target and reports them to
/// the [`Hooks`].
#[derive(Clone)]
pub struct Authenticator {
    auth: Auth,
    hooks: Arc<dyn Hooks>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub(crate) fn new(auth: Auth, hooks: Arc<dyn Hooks>) -> Self {
        Self { auth, hooks }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if !self.auth.enabled() {
            return Ok(request);
        }
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if self.auth.accepts(header) {
            return Ok(request);
        }
        self.hooks.unauthenticated();
        tracing::warn!(
            target: "lockd::audit",
            transport = "grpc",
            key_present = header.and_then(bearer_key).is_some(),
            "refused request: missing or unknown API key"
        );
        Err(refusal("unauthenticated", "missing or unknown API key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_accept_only_configured_bearer_keys() {
        let auth = Auth::api_keys(&["key-one", "key-two"]);
        assert!(auth.enabled());
        assert!(auth.accepts(Some("Bearer key-one")));
        assert!(auth.accepts(Some("bearer   key-two ")));
        assert!(!auth.accepts(Some("Bearer key-three")));
        assert!(!auth.accepts(Some("Basic key-one")));
        assert!(!auth.accepts(Some("key-one")));
        assert!(!auth.accepts(None));
        assert!(!format!("{auth:?}").contains("key-one"));
        let open = Auth::api_keys::<&str>(&[]);
        assert!(!open.enabled());
        assert!(open.accepts(None));
    }

    #[test]
    fn a_custom_check_sees_the_presented_key() {
        let auth = Auth::check(|key| key == Some("k"));
        assert!(auth.accepts(Some("Bearer k")));
        assert!(!auth.accepts(None));
    }

    #[test]
    fn digests_match_lockds_scheme() {
        let auth = Auth::digests(vec![key_digest(b"secret")]);
        assert!(auth.accepts(Some("Bearer secret")));
        assert!(!auth.accepts(Some("Bearer Secret")));
    }
}
