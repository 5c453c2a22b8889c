//! Key layout: per object `{prefix}{<object>}:holders`, `{prefix}{<object>}:fence` and
//! `{prefix}{<object>}:queue`; per prefix the ticket counter `{prefix}tickets` and the channel
//! `{prefix}released`.
//!
//! The object sits inside a Redis Cluster hash tag, so the keys of one object live in one slot
//! (a multi-object script and the ticket counter span slots: see the crate docs, "Redis
//! Cluster"). Inside the tag the object is escaped (`%` -> `%25`, `{` -> `%7B`, `}` -> `%7D`)
//! so an object containing braces cannot end the tag early. The
//! escaping works character by character, so an object starts with a prefix exactly when its
//! escaped form starts with the escaped prefix, which is what `list` matches on.

use lockcore::ObjectId;

/// Builds and parses the keys of one key prefix.
#[derive(Debug, Clone)]
pub(crate) struct KeyLayout {
    prefix: String,
}

const HOLDERS_SUFFIX: &str = "}:holders";
const FENCE_SUFFIX: &str = "}:fence";
const QUEUE_SUFFIX: &str = "}:queue";

impl KeyLayout {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The hash of the object's holders: token digest (hex) -> holder record (see
    /// [`crate::scripts`]).
    pub(crate) fn holders_key(&self, object: &ObjectId) -> String {
        self.key(object, HOLDERS_SUFFIX)
    }

    /// The object's last fence, kept after release.
    pub(crate) fn fence_key(&self, object: &ObjectId) -> String {
        self.key(object, FENCE_SUFFIX)
    }

    /// The sorted set of the object's queue entries, scored by ticket. Exists exactly while
    /// someone waits for the object: scripts publish wake-ups only then.
    pub(crate) fn queue_key(&self, object: &ObjectId) -> String {
        self.key(object, QUEUE_SUFFIX)
    }

    /// The counter tickets are drawn from, one per key prefix.
    pub(crate) fn tickets_key(&self) -> String {
        format!("{}tickets", self.prefix)
    }

    /// The pub/sub channel release scripts publish freed objects on.
    pub(crate) fn channel(&self) -> String {
        format!("{}released", self.prefix)
    }

    /// A `SCAN MATCH` pattern for the holders keys of objects starting with `object_prefix`.
    pub(crate) fn holders_pattern(&self, object_prefix: &str) -> String {
        let mut pattern = glob_escape(&self.prefix);
        pattern.push('{');
        pattern.push_str(&glob_escape(&escape(object_prefix)));
        pattern.push('*');
        pattern.push_str(HOLDERS_SUFFIX);
        pattern
    }

    /// The object a holders key names, or `None` for a key not in this layout.
    pub(crate) fn object_of_holders_key(&self, key: &[u8]) -> Option<ObjectId> {
        let key = std::str::from_utf8(key).ok()?;
        let inner = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix(HOLDERS_SUFFIX)?;
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
        let lock = layout.holders_key(&object("/vol/a"));
        let fence = layout.fence_key(&object("/vol/a"));
        assert_eq!(lock, "lockd:{/vol/a}:holders");
        assert_eq!(fence, "lockd:{/vol/a}:fence");
        assert_eq!(hash_tag(&lock), hash_tag(&fence));
        assert_eq!(layout.queue_key(&object("/vol/a")), "lockd:{/vol/a}:queue");
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
        let lock = layout.holders_key(&tricky);
        assert_eq!(hash_tag(&lock), "a%7Db%7Bc%257Dd");
        assert_eq!(hash_tag(&lock), hash_tag(&layout.fence_key(&tricky)));
        assert_eq!(layout.object_of_holders_key(lock.as_bytes()), Some(tricky));
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
        assert_eq!(layout.object_of_holders_key(b"lockd:{a}:fence"), None);
        assert_eq!(layout.object_of_holders_key(b"lockd:{a}:queue"), None);
        assert_eq!(layout.object_of_holders_key(b"other:{a}:holders"), None);
        assert_eq!(layout.object_of_holders_key(b"lockd:{}:holders"), None);
        assert_eq!(layout.object_of_holders_key(b"lockd:tickets"), None);
        assert_eq!(layout.object_of_holders_key(&[0xff, 0xfe]), None);
    }

    #[test]
    fn the_scan_pattern_escapes_glob_syntax() {
        let layout = KeyLayout::new("a*:");
        assert_eq!(
            layout.holders_pattern("x?[y]\\"),
            "a\\*:{x\\?\\[y\\]\\\\*}:holders"
        );
        assert_eq!(layout.holders_pattern(""), "a\\*:{*}:holders");
        assert_eq!(layout.holders_pattern("{"), "a\\*:{%7B*}:holders");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Object names rich in the characters the escaping and the glob pattern care about.
        fn name() -> impl Strategy<Value = String> {
            "[a%{}7BDd25*?\\[\\]\\\\:/ü]{1,12}"
        }

        fn object(name: &str) -> ObjectId {
            ObjectId::new(name).expect("generated names are valid")
        }

        /// Redis `stringmatch` for the patterns `holders_pattern` builds: `*`, `?` and `\x`.
        fn glob_matches(pattern: &[char], text: &[char]) -> bool {
            match pattern.split_first() {
                None => text.is_empty(),
                Some(('*', rest)) => (0..=text.len()).any(|skip| glob_matches(rest, &text[skip..])),
                Some(('?', rest)) => !text.is_empty() && glob_matches(rest, &text[1..]),
                Some(('\\', rest)) if !rest.is_empty() => {
                    text.first() == Some(&rest[0]) && glob_matches(&rest[1..], &text[1..])
                }
                Some((c, rest)) => text.first() == Some(c) && glob_matches(rest, &text[1..]),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Distinct objects never share a key, and every key names its object back.
            #[test]
            fn distinct_objects_never_map_to_the_same_key(
                prefix in "[a-z:{}*]{0,6}",
                a in name(),
                b in name(),
            ) {
                let layout = KeyLayout::new(&prefix);
                let (a, b) = (object(&a), object(&b));
                prop_assert_eq!(a == b, layout.holders_key(&a) == layout.holders_key(&b));
                prop_assert_eq!(a == b, layout.fence_key(&a) == layout.fence_key(&b));
                prop_assert_ne!(layout.holders_key(&a), layout.fence_key(&b));
                prop_assert_ne!(layout.holders_key(&a), layout.queue_key(&b));
                prop_assert_eq!(layout.object_of_holders_key(layout.holders_key(&a).as_bytes()), Some(a.clone()));
                prop_assert_eq!(layout.object_of_holders_key(layout.fence_key(&a).as_bytes()), None);
            }

            /// Escaping round-trips, leaves no brace to end the hash tag early, and keeps prefixes:
            /// `a` starts with `p` exactly when `escape(a)` starts with `escape(p)`.
            #[test]
            fn escaping_round_trips_and_preserves_prefixes(a in name(), p in "[a%{}7BD25]{0,6}") {
                let escaped = escape(&a);
                prop_assert_eq!(unescape(&escaped), Some(a.clone()));
                prop_assert!(!escaped.contains(['{', '}']), "{escaped} has a brace");
                prop_assert_eq!(a.starts_with(&p), escaped.starts_with(&escape(&p)));
            }

            /// The `SCAN MATCH` pattern for a prefix matches an object's lock key exactly when the
            /// object starts with the prefix, whatever glob syntax either contains.
            #[test]
            fn the_scan_pattern_matches_exactly_the_lock_keys_under_the_prefix(
                key_prefix in "[a-z:*?\\[\\]]{0,5}",
                object_prefix in "[a%{}*?\\[\\]\\\\]{0,4}",
                a in name(),
            ) {
                let layout = KeyLayout::new(&key_prefix);
                let a = object(&a);
                let pattern: Vec<char> = layout.holders_pattern(&object_prefix).chars().collect();
                let key: Vec<char> = layout.holders_key(&a).chars().collect();
                prop_assert_eq!(
                    glob_matches(&pattern, &key),
                    a.as_str().starts_with(object_prefix.as_str())
                );
                let fence: Vec<char> = layout.fence_key(&a).chars().collect();
                prop_assert!(!glob_matches(&pattern, &fence));
            }

            /// Parsing arbitrary text or key bytes never panics.
            #[test]
            fn parsing_arbitrary_keys_never_panics(text in any::<String>(), bytes in any::<Vec<u8>>()) {
                let _ = unescape(&text);
                let layout = KeyLayout::new("lockd:");
                let _ = layout.object_of_holders_key(text.as_bytes());
                let _ = layout.object_of_holders_key(&bytes);
            }
        }
    }
}
