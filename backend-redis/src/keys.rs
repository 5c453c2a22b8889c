//! Key layout: per object `{prefix}{<member>}:holders`, `{prefix}{<member>}:fence` and
//! `{prefix}{<member>}:queue`; per prefix the ticket counter `{prefix}tickets`, the index sets
//! `{prefix}index`, `{prefix}deadlines` and `{prefix}waiting` (see [`crate::scripts`]), and the
//! channel `{prefix}released`.
//!
//! An object's *member* is its id escaped (`%` -> `%25`, `{` -> `%7B`, `}` -> `%7D`) so that it
//! can sit inside a Redis Cluster hash tag without ending it early: the keys of one object live
//! in one slot (a multi-object script and the per-prefix keys span slots: see the crate docs,
//! "Redis Cluster"). The escaping works character by character and keeps `/`, so an object
//! starts with a prefix exactly when its member starts with the escaped prefix: the ancestors
//! of an object are the prefixes of its member that end before a `/`, and the objects under
//! it, or starting with a `list` prefix, are a range of members in byte order.

use lockcore::ObjectId;

/// Builds the keys of one key prefix and maps objects to members and back.
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

    /// The key prefix, from which the scripts build the keys of objects they find in the index.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash of the object's holders: token digest (hex) -> holder record (see
    /// [`crate::scripts`]).
    pub(crate) fn holders_key(&self, object: &str) -> String {
        self.key(object, HOLDERS_SUFFIX)
    }

    /// The object's last fence, kept after release.
    pub(crate) fn fence_key(&self, object: &str) -> String {
        self.key(object, FENCE_SUFFIX)
    }

    /// The sorted set of the object's queue entries, scored by ticket. Exists exactly while
    /// someone waits for the object.
    pub(crate) fn queue_key(&self, object: &str) -> String {
        self.key(object, QUEUE_SUFFIX)
    }

    /// The counter tickets are drawn from, one per key prefix.
    pub(crate) fn tickets_key(&self) -> String {
        format!("{}tickets", self.prefix)
    }

    /// The members of every object with holder records or queue entries, in byte order.
    pub(crate) fn index_key(&self) -> String {
        format!("{}index", self.prefix)
    }

    /// For each indexed member, when its last record lapses.
    pub(crate) fn deadlines_key(&self) -> String {
        format!("{}deadlines", self.prefix)
    }

    /// The members of every object that has a queue.
    pub(crate) fn waiting_key(&self) -> String {
        format!("{}waiting", self.prefix)
    }

    /// The pub/sub channel release scripts publish freed objects on.
    pub(crate) fn channel(&self) -> String {
        format!("{}released", self.prefix)
    }

    fn key(&self, object: &str, suffix: &str) -> String {
        let escaped = member(object);
        let mut key = String::with_capacity(self.prefix.len() + escaped.len() + 1 + suffix.len());
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(&escaped);
        key.push_str(suffix);
        key
    }
}

/// The member naming `object` in the scripts and the index sets.
pub(crate) fn member(object: &str) -> String {
    escape(object)
}

/// The object a member names, or `None` for text [`member`] cannot have produced.
pub(crate) fn object_of_member(member: &[u8]) -> Option<ObjectId> {
    let text = std::str::from_utf8(member).ok()?;
    ObjectId::new(unescape(text)?).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid object id")
    }

    #[test]
    fn keys_of_one_object_share_one_hash_tag() {
        let layout = KeyLayout::new("lockd:");
        let lock = layout.holders_key("/vol/a");
        let fence = layout.fence_key("/vol/a");
        assert_eq!(lock, "lockd:{/vol/a}:holders");
        assert_eq!(fence, "lockd:{/vol/a}:fence");
        assert_eq!(hash_tag(&lock), hash_tag(&fence));
        assert_eq!(layout.queue_key("/vol/a"), "lockd:{/vol/a}:queue");
        assert_eq!(layout.index_key(), "lockd:index");
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
        let lock = layout.holders_key(tricky.as_str());
        assert_eq!(hash_tag(&lock), "a%7Db%7Bc%257Dd");
        assert_eq!(hash_tag(&lock), member(tricky.as_str()));
        assert_eq!(
            hash_tag(&lock),
            hash_tag(&layout.fence_key(tricky.as_str()))
        );
        assert_eq!(object_of_member(hash_tag(&lock).as_bytes()), Some(tricky));
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
    fn text_that_names_no_object_is_not_taken_for_a_member() {
        assert_eq!(object_of_member(b"bad%zz"), None);
        assert_eq!(object_of_member(b"a{b"), None);
        assert_eq!(object_of_member(b"/a/"), None, "ids never end with /");
        assert_eq!(object_of_member(b""), None);
        assert_eq!(object_of_member(&[0xff, 0xfe]), None);
        assert_eq!(object_of_member(b"/a%7Bb"), Some(object("/a{b")));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Path ids rich in the characters the escaping cares about.
        fn name() -> impl Strategy<Value = String> {
            "/?[a%{}7BDd25ü]{1,3}(/[a%{}7BDd25ü]{1,3}){0,3}"
        }

        fn object(name: &str) -> ObjectId {
            ObjectId::new(name).expect("generated names are valid")
        }

        /// Whether `member` lies in the half-open byte range `[low, high)`.
        fn within(member: &str, low: &str, high: &[u8]) -> bool {
            member.as_bytes() >= low.as_bytes() && member.as_bytes() < high
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Distinct objects never share a key, and every member names its object back.
            #[test]
            fn distinct_objects_never_map_to_the_same_key(
                prefix in "[a-z:*]{0,6}",
                a in name(),
                b in name(),
            ) {
                let layout = KeyLayout::new(&prefix);
                let (a, b) = (object(&a), object(&b));
                let (a, b) = (a.as_str(), b.as_str());
                prop_assert_eq!(a == b, layout.holders_key(a) == layout.holders_key(b));
                prop_assert_eq!(a == b, layout.fence_key(a) == layout.fence_key(b));
                prop_assert_ne!(layout.holders_key(a), layout.fence_key(b));
                prop_assert_ne!(layout.holders_key(a), layout.queue_key(b));
                prop_assert_eq!(object_of_member(member(a).as_bytes()), Some(object(a)));
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

            /// What the scripts compute from members is what lockcore's path rules say of the
            /// objects: a member's ancestors (cut before each `/`) are the members of the
            /// object's ancestors, the members under a subtree are the range
            /// `[member/, member0)`, and the objects starting with a list prefix are the range
            /// `[escape(prefix), escape(prefix) + 0xff)`.
            #[test]
            fn member_ranges_follow_the_path_rules(a in name(), q in name(), p in "[a/%{}ü]{0,4}") {
                let (a, q) = (object(&a), object(&q));
                let (a, q) = (a.as_str(), q.as_str());
                let (m, root) = (member(a), member(q));
                let cut: Vec<&str> = lockcore::path::ancestors(&m).collect();
                let expected: Vec<String> = lockcore::path::ancestors(a).map(member).collect();
                prop_assert_eq!(cut, expected);
                let (low, high) = lockcore::path::subtree_range(&root);
                prop_assert_eq!(within(&m, &low, high.as_bytes()), lockcore::path::is_under(a, q));
                let start = escape(&p);
                let mut end = start.clone().into_bytes();
                end.push(0xff);
                prop_assert_eq!(within(&m, &start, &end), a.starts_with(p.as_str()));
            }

            /// Parsing arbitrary text never panics.
            #[test]
            fn parsing_arbitrary_members_never_panics(text in any::<String>(), bytes in any::<Vec<u8>>()) {
                let _ = unescape(&text);
                let _ = object_of_member(text.as_bytes());
                let _ = object_of_member(&bytes);
            }
        }
    }
}
