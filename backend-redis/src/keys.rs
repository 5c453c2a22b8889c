//! Key layout: `{prefix}{<object>}:lock`, `{prefix}{<object>}:fence` and
//! `{prefix}{<object>}:waiting`.
//!
//! The object sits inside a Redis Cluster hash tag, so both keys of one object live in one slot
//! and every script touches one slot. Inside the tag the object is escaped (`%` -> `%25`,
//! `{` -> `%7B`, `}` -> `%7D`) so an object containing braces cannot end the tag early. The
//! escaping works character by character, so an object starts with a prefix exactly when its
//! escaped form starts with the escaped prefix, which is what `list` matches on.

use lockcore::ObjectId;

/// Builds and parses the keys of one key prefix.
#[derive(Debug, Clone)]
pub(crate) struct KeyLayout {
    prefix: String,
}

const LOCK_SUFFIX: &str = "}:lock";
const FENCE_SUFFIX: &str = "}:fence";
const WAITING_SUFFIX: &str = "}:waiting";

impl KeyLayout {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The hash holding the current holder (`owner`, `digest`, `fence`, `acquired_at`).
    pub(crate) fn lock_key(&self, object: &ObjectId) -> String {
        self.key(object, LOCK_SUFFIX)
    }

    /// The object's last fence, kept after release.
    pub(crate) fn fence_key(&self, object: &ObjectId) -> String {
        self.key(object, FENCE_SUFFIX)
    }

    /// Present (with an expiry) while someone waits for the object: releases publish only then.
    pub(crate) fn waiting_key(&self, object: &ObjectId) -> String {
        self.key(object, WAITING_SUFFIX)
    }

    /// The pub/sub channel release scripts publish freed objects on.
    pub(crate) fn channel(&self) -> String {
        format!("{}released", self.prefix)
    }

    /// A `SCAN MATCH` pattern for the lock keys of objects starting with `object_prefix`.
    pub(crate) fn lock_pattern(&self, object_prefix: &str) -> String {
        let mut pattern = glob_escape(&self.prefix);
        pattern.push('{');
        pattern.push_str(&glob_escape(&escape(object_prefix)));
        pattern.push('*');
        pattern.push_str(LOCK_SUFFIX);
        pattern
    }

    /// The object a lock key names, or `None` for a key not in this layout.
    pub(crate) fn object_of_lock_key(&self, key: &[u8]) -> Option<ObjectId> {
        let key = std::str::from_utf8(key).ok()?;
        let inner = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix(LOCK_SUFFIX)?;
        ObjectId::new(unescape(inner)?).ok()
    }

    fn key(&self, object: &ObjectId, suffix: &str) -> String {
        let escaped = escape(object.as_str());
        let mut key = String::with_capacity(self.prefix.len() + escaped.len() + 1 + suffix.len());
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(&escaped);
        key.push_str(suffix);
        key
    }
}

/// Escapes `%`, `{` and `}` so the result can sit inside a hash tag.
pub(crate) fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            other => out.push(other),
        }
    }
    out
}

/// Reverses [`escape`]; `None` for text [`escape`] cannot have produced.
pub(crate) fn unescape(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(at) = rest.find(['%', '{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let (plain, skip) = if tail.starts_with("%25") {
            ('%', 3)
        } else if tail.starts_with("%7B") {
            ('{', 3)
        } else if tail.starts_with("%7D") {
            ('}', 3)
        } else {
            return None;
        };
        out.push(plain);
        rest = &tail[skip..];
    }
    out.push_str(rest);
    Some(out)
}

/// Escapes the characters `SCAN MATCH` treats as glob syntax.
fn glob_escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid object id")
    }

    #[test]
    fn keys_of_one_object_share_one_hash_tag() {
        let layout = KeyLayout::new("lockd:");
        let lock = layout.lock_key(&object("/vol/a"));
        let fence = layout.fence_key(&object("/vol/a"));
        assert_eq!(lock, "lockd:{/vol/a}:lock");
        assert_eq!(fence, "lockd:{/vol/a}:fence");
        assert_eq!(hash_tag(&lock), hash_tag(&fence));
        assert_eq!(
            layout.waiting_key(&object("/vol/a")),
            "lockd:{/vol/a}:waiting"
        );
    }

    /// The part of a key Redis Cluster hashes: from the first `{` to the next `}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("has a tag");
        let close = key[open + 1..].find('}').expect("tag closes") + open + 1;
        &key[open + 1..close]
    }

    #[test]
    fn braces_in_objects_do_not_break_the_hash_tag() {
        let layout = KeyLayout::new("p:");
        let tricky = object("a}b{c%7Dd");
        let lock = layout.lock_key(&tricky);
        assert_eq!(hash_tag(&lock), "a%7Db%7Bc%257Dd");
        assert_eq!(hash_tag(&lock), hash_tag(&layout.fence_key(&tricky)));
        assert_eq!(layout.object_of_lock_key(lock.as_bytes()), Some(tricky));
    }

    #[test]
    fn escaping_round_trips_and_preserves_prefixes() {
        for raw in ["plain", "%", "{}", "%7B", "a%b{c}d", "ü{ß}"] {
            assert_eq!(unescape(&escape(raw)).as_deref(), Some(raw));
        }
        assert!(escape("a{b}c").starts_with(&escape("a{b")));
        assert_eq!(unescape("bad%zz"), None);
        assert_eq!(unescape("bad{"), None);
    }

    #[test]
    fn foreign_keys_are_not_taken_for_locks() {
        let layout = KeyLayout::new("lockd:");
        assert_eq!(layout.object_of_lock_key(b"lockd:{a}:fence"), None);
        assert_eq!(layout.object_of_lock_key(b"lockd:{a}:waiting"), None);
        assert_eq!(layout.object_of_lock_key(b"other:{a}:lock"), None);
        assert_eq!(layout.object_of_lock_key(b"lockd:{}:lock"), None);
        assert_eq!(layout.object_of_lock_key(&[0xff, 0xfe]), None);
    }

    #[test]
    fn the_scan_pattern_escapes_glob_syntax() {
        let layout = KeyLayout::new("a*:");
        assert_eq!(
            layout.lock_pattern("x?[y]\\"),
            "a\\*:{x\\?\\[y\\]\\\\*}:lock"
        );
        assert_eq!(layout.lock_pattern(""), "a\\*:{*}:lock");
        assert_eq!(layout.lock_pattern("{"), "a\\*:{%7B*}:lock");
    }
}
