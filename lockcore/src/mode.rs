//! Lock modes ([`LockMode`]), scopes ([`LockScope`]) and what one request asks of one object
//! ([`LockSpec`]).

use std::fmt;
use std::str::FromStr;

use crate::error::LockError;
use crate::id::ObjectId;

/// How a grant shares its object with other grants.
///
/// Shared holders of one object coexist; an exclusive holder excludes every other holder.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// The only holder of its object (the default).
    #[default]
    Exclusive,
    /// One of any number of shared holders of its object.
    Shared,
}

impl LockMode {
    /// The mode's name on the wire and in storage: `exclusive` or `shared`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        }
    }

    /// Whether a grant in this mode and one in `other` cannot hold one object together.
    pub fn conflicts_with(self, other: LockMode) -> bool {
        self == LockMode::Exclusive || other == LockMode::Exclusive
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockMode {
    type Err = LockError;

    /// Parses `exclusive` or `shared`; anything else is [`LockError::InvalidArgument`].
    fn from_str(text: &str) -> Result<Self, LockError> {
        match text {
            "exclusive" => Ok(LockMode::Exclusive),
            "shared" => Ok(LockMode::Shared),
            _ => Err(LockError::invalid_argument(
                "mode",
                "must be \"exclusive\" or \"shared\"",
            )),
        }
    }
}

/// What a grant covers: its object only, or the object and everything under it.
///
/// See [`crate::path`] for the tree of ids and the conflict rule.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum LockScope {
    /// The object alone (the default).
    #[default]
    Object,
    /// The object and every object whose id starts with the object's id followed by `/`.
    Subtree,
}

impl LockScope {
    /// The scope's name on the wire and in storage: `object` or `subtree`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockScope::Object => "object",
            LockScope::Subtree => "subtree",
        }
    }
}

impl fmt::Display for LockScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockScope {
    type Err = LockError;

    /// Parses `object` or `subtree`; anything else is [`LockError::InvalidArgument`].
    fn from_str(text: &str) -> Result<Self, LockError> {
        match text {
            "object" => Ok(LockScope::Object),
            "subtree" => Ok(LockScope::Subtree),
            _ => Err(LockError::invalid_argument(
                "scope",
                "must be \"object\" or \"subtree\"",
            )),
        }
    }
}

/// One object of an acquire, the mode it is asked in and what the grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockSpec {
    /// The object to lock.
    pub object: ObjectId,
    /// The mode to lock it in.
    pub mode: LockMode,
    /// The object alone, or its whole subtree.
    pub scope: LockScope,
}

impl LockSpec {
    /// `object` in `mode`, the object alone.
    pub fn new(object: ObjectId, mode: LockMode) -> Self {
        Self {
            object,
            mode,
            scope: LockScope::Object,
        }
    }

    /// The subtree rooted at `object`, in `mode`.
    pub fn subtree(object: ObjectId, mode: LockMode) -> Self {
        Self::new(object, mode).with_scope(LockScope::Subtree)
    }

    /// The same spec covering `scope`.
    pub fn with_scope(mut self, scope: LockScope) -> Self {
        self.scope = scope;
        self
    }

    /// `object`, exclusively.
    pub fn exclusive(object: ObjectId) -> Self {
        Self::new(object, LockMode::Exclusive)
    }

    /// `object`, shared.
    pub fn shared(object: ObjectId) -> Self {
        Self::new(object, LockMode::Shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_two_shared_grants_are_compatible() {
        use LockMode::{Exclusive, Shared};
        assert!(!Shared.conflicts_with(Shared));
        assert!(Shared.conflicts_with(Exclusive));
        assert!(Exclusive.conflicts_with(Shared));
        assert!(Exclusive.conflicts_with(Exclusive));
    }

    #[test]
    fn scopes_parse_from_their_names_only() {
        for scope in [LockScope::Object, LockScope::Subtree] {
            assert_eq!(scope.as_str().parse::<LockScope>(), Ok(scope));
        }
        for bad in ["", "tree", "Subtree"] {
            assert!(matches!(
                bad.parse::<LockScope>(),
                Err(LockError::InvalidArgument { field: "scope", .. })
            ));
        }
    }

    #[test]
    fn modes_parse_from_their_names_only() {
        for mode in [LockMode::Exclusive, LockMode::Shared] {
            assert_eq!(mode.as_str().parse::<LockMode>(), Ok(mode));
        }
        for bad in ["", "Exclusive", "read", "shared "] {
            assert!(matches!(
                bad.parse::<LockMode>(),
                Err(LockError::InvalidArgument { field: "mode", .. })
            ));
        }
    }
}
