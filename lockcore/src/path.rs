//! Object ids as paths: the tree that subtree locks ([`LockScope::Subtree`]) cover, and the one
//! conflict rule every store implements.
//!
//! An object id is a path of segments separated by `/`. It may start with `/` (an absolute path,
//! `/vol/a/x`) or not (`vol/a/x`, `chunk-7`: a one-segment path). Every id has one spelling:
//! [`ObjectId::new`](crate::ObjectId::new) refuses, as `invalid_argument`, ids with
//!
//! * an empty segment: `//` anywhere, or a trailing `/` (so `/vol/a/` and `/` are refused; write
//!   `/vol/a`),
//! * a `.` or `..` segment (`/vol/a/../b` would otherwise escape a subtree lock on `/vol/b`),
//! * more than [`MAX_OBJECT_DEPTH`] segments.
//!
//! They are refused rather than normalised, for every lock and not only subtree ones, because an
//! object lock on `/vol/a/x` meets subtree semantics too: a subtree lock on `/vol/a` covers it.
//! The DFS stays responsible for canonical names beyond that (case folding, symlinks, Unicode
//! normalisation).
//!
//! **Coverage.** An object lock on `P` covers `P`. A subtree lock on `P` covers `P` and every id
//! under it: every id that starts with `P` followed by `/`. So a subtree lock on `/vol/a` covers
//! `/vol/a`, `/vol/a/x` and `/vol/a/x/y`, but not `/vol/ab`.
//!
//! **Conflict.** Two locks conflict when their modes conflict (exclusive against anything) and the
//! sets they cover intersect ([`overlaps`]):
//! * object `P`, object `Q`: `P == Q`;
//! * subtree `P`, object `Q`: `Q == P` or `Q` is under `P`;
//! * subtree `P`, subtree `Q`: `P == Q` or one is under the other.
//!
//! **Cost.** So a store decides a claim on `Q` by looking at the holders (and queue entries) of
//! `Q` itself, at the subtree holders of `Q`'s [`ancestors`], and, for a subtree claim, at what is
//! held under `Q` (an ordered index range, [`subtree_range`], or per-ancestor sets): never at
//! unrelated locks.

use crate::error::LockError;
use crate::mode::{LockMode, LockScope};

/// The most segments an object id may have.
pub const MAX_OBJECT_DEPTH: usize = 32;

/// Refuses an id with an empty, `.` or `..` segment, or more than [`MAX_OBJECT_DEPTH`] segments,
/// as [`LockError::InvalidArgument`] on `field`.
pub(crate) fn check_path(field: &'static str, id: &str) -> Result<(), LockError> {
    let relative = id.strip_prefix('/').unwrap_or(id);
    let mut depth = 0;
    for segment in relative.split('/') {
        match segment {
            "" => return Err(LockError::invalid_argument(
                field,
                "must not contain an empty path segment (\"//\", a trailing \"/\", or \"/\" alone)",
            )),
            "." | ".." => {
                return Err(LockError::invalid_argument(
                    field,
                    "must not contain a \".\" or \"..\" path segment",
                ))
            }
            _ => depth += 1,
        }
    }
    if depth > MAX_OBJECT_DEPTH {
        return Err(LockError::invalid_argument(
            field,
            format!("has {depth} path segments, at most {MAX_OBJECT_DEPTH} are allowed"),
        ));
    }
    Ok(())
}

/// The proper ancestors of `id`, nearest to the root first: `/vol/a/x` has `/vol` and `/vol/a`;
/// `vol/a` has `vol`; a one-segment id has none.
///
/// ```
/// let ancestors: Vec<&str> = lockcore::path::ancestors("/vol/a/x").collect();
/// assert_eq!(ancestors, ["/vol", "/vol/a"]);
/// assert_eq!(lockcore::path::ancestors("chunk-7").count(), 0);
/// ```
pub fn ancestors(id: &str) -> impl Iterator<Item = &str> {
    id.char_indices()
        .filter(|&(at, c)| c == '/' && at > 0)
        .map(move |(at, _)| &id[..at])
}

/// Whether `id` is strictly under `root`: it starts with `root` followed by `/`.
///
/// ```
/// use lockcore::path::is_under;
/// assert!(is_under("/vol/a/x", "/vol/a"));
/// assert!(!is_under("/vol/ab", "/vol/a"));
/// assert!(!is_under("/vol/a", "/vol/a"));
/// ```
pub fn is_under(id: &str, root: &str) -> bool {
    id.len() > root.len() + 1 && id.as_bytes()[root.len()] == b'/' && id.starts_with(root)
}

/// Whether a lock on `a` in scope `a_scope` and one on `b` in `b_scope` cover a common id.
pub fn overlaps(a: &str, a_scope: LockScope, b: &str, b_scope: LockScope) -> bool {
    a == b
        || (a_scope == LockScope::Subtree && is_under(b, a))
        || (b_scope == LockScope::Subtree && is_under(a, b))
}

/// Whether two locks conflict: their modes conflict and they cover a common id.
pub fn conflicts(a: (&str, LockScope, LockMode), b: (&str, LockScope, LockMode)) -> bool {
    a.2.conflicts_with(b.2) && overlaps(a.0, a.1, b.0, b.1)
}

/// The ids strictly under `root`, as a half-open range of an ordered byte-wise index:
/// `[root + "/", root + "0")` (`0` is the byte after `/`).
///
/// ```
/// let (low, high) = lockcore::path::subtree_range("/vol/a");
/// assert_eq!((low.as_str(), high.as_str()), ("/vol/a/", "/vol/a0"));
/// assert!("/vol/a/x".as_bytes() >= low.as_bytes() && "/vol/a/x".as_bytes() < high.as_bytes());
/// assert!(!("/vol/ab".as_bytes() < high.as_bytes() && "/vol/ab".as_bytes() >= low.as_bytes()));
/// ```
pub fn subtree_range(root: &str) -> (String, String) {
    (format!("{root}/"), format!("{root}0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockMode::{Exclusive, Shared};
    use LockScope::{Object, Subtree};

    #[test]
    fn ids_have_one_spelling() {
        for good in ["/vol/a", "vol/a", "chunk-7", "/a", "/a/b.c/..d/...", "a:b"] {
            assert!(check_path("object", good).is_ok(), "{good}");
        }
        for bad in [
            "/", "//a", "/a//b", "/a/", "a/", "/a/./b", "/a/../b", "..", ".", "/a/..",
        ] {
            assert!(
                matches!(
                    check_path("object", bad),
                    Err(LockError::InvalidArgument {
                        field: "object",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = |n: usize| "/d".repeat(n);
        assert!(check_path("object", &deep(MAX_OBJECT_DEPTH)).is_ok());
        assert!(check_path("object", &deep(MAX_OBJECT_DEPTH + 1)).is_err());
    }

    #[test]
    fn ancestors_run_from_the_root_down() {
        assert_eq!(ancestors("/a/b/c").collect::<Vec<_>>(), ["/a", "/a/b"]);
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(ancestors("/a").count(), 0);
    }

    #[test]
    fn coverage_follows_the_issue_rules() {
        // object vs object: equal ids only.
        assert!(overlaps("/v/a", Object, "/v/a", Object));
        assert!(!overlaps("/v/a", Object, "/v/a/x", Object));
        // subtree vs object: the object at or under the root.
        assert!(overlaps("/v/a", Subtree, "/v/a", Object));
        assert!(overlaps("/v/a", Subtree, "/v/a/x/y", Object));
        assert!(overlaps("/v/a/x/y", Object, "/v/a", Subtree));
        assert!(!overlaps("/v/a", Subtree, "/v/ab", Object));
        assert!(!overlaps("/v/a/x", Subtree, "/v/a", Object));
        // subtree vs subtree: equal, or one under the other.
        assert!(overlaps("/v", Subtree, "/v/a", Subtree));
        assert!(overlaps("/v/a", Subtree, "/v", Subtree));
        assert!(!overlaps("/v/a", Subtree, "/v/b", Subtree));
    }

    #[test]
    fn shared_locks_never_conflict_whatever_they_cover() {
        assert!(!conflicts(
            ("/v", Subtree, Shared),
            ("/v/a", Object, Shared)
        ));
        assert!(conflicts(
            ("/v", Subtree, Shared),
            ("/v/a", Object, Exclusive)
        ));
        assert!(conflicts(
            ("/v/a", Object, Exclusive),
            ("/v", Subtree, Shared)
        ));
        assert!(!conflicts(
            ("/v/a", Object, Exclusive),
            ("/v/b", Subtree, Exclusive)
        ));
    }
}
