//! The key layout: which etcd keys hold an object's holders, queue and fence, and the values
//! stored in them.
//!
//! With the prefix `P` (default `lockd/`) and `␀` for a NUL byte (object names and owners
//! contain no control characters, so `␀` cannot occur inside them), an object `o` uses:
//!
//! * `P o␀<o>␀h␀<digest hex>␀<fence>`: one key per holder, value
//!   `"<mode> <claimed> <acquired_ms> <ttl_ms> <owner>"` (mode `x` or `s`, claimed `0`/`1`,
//!   acquired on the granting lockd's wall clock, for display only), attached to the grant's
//!   etcd lease: etcd deletes it when the lease expires.
//! * `P o␀<o>␀q␀<digest hex>`: one key per waiting request (the digest of its claim on `o`),
//!   value `"<mode> <owner>"`, attached to the store's current queue lease. The request's
//!   ticket is the key's `create_revision`: etcd's revision counter orders every waiter of the
//!   cluster by arrival, and re-putting the key to renew it keeps its create revision.
//! * `P f␀<o>`: the last fence issued for `o` (decimal), without a lease.
//! * `P w␀<o>`: put (empty, on the holder's lease) by each downgrade of a holder of `o`, for
//!   the watch, which sees only deletions of holder and queue keys.
//!
//! All of an object's holders and queue entries lie in one key range, `P o␀<o>␀`, so one range
//! read returns them and one range compare guards them. The holders of every object whose name
//! starts with `p` lie in the range `P o␀<p>`, which `list` pages through.

use lockcore::{Fence, LockMode, ObjectId, OwnerId, TokenDigest};

/// Key names for one key prefix.
#[derive(Debug, Clone)]
pub(crate) struct KeyLayout {
    prefix: Vec<u8>,
}

impl KeyLayout {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.as_bytes().to_vec(),
        }
    }

    fn with(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut key = self.prefix.clone();
        for part in parts {
            key.extend_from_slice(part);
        }
        key
    }

    /// Every key the watch covers: all objects' holders and queues.
    pub(crate) fn objects_prefix(&self) -> Vec<u8> {
        self.with(&[b"o\0"])
    }

    /// The range of all of `object`'s holders and queue entries.
    pub(crate) fn object_prefix(&self, object: &ObjectId) -> Vec<u8> {
        self.with(&[b"o\0", object.as_str().as_bytes(), b"\0"])
    }

    /// The range of `object`'s holders.
    pub(crate) fn holders_prefix(&self, object: &ObjectId) -> Vec<u8> {
        self.with(&[b"o\0", object.as_str().as_bytes(), b"\0h\0"])
    }

    /// The key of one holder.
    pub(crate) fn holder_key(
        &self,
        object: &ObjectId,
        digest: &TokenDigest,
        fence: Fence,
    ) -> Vec<u8> {
        self.with(&[
            b"o\0",
            object.as_str().as_bytes(),
            b"\0h\0",
            digest.to_hex().as_bytes(),
            b"\0",
            fence.get().to_string().as_bytes(),
        ])
    }

    /// The start of the keys of `object`'s holders with `digest`.
    pub(crate) fn holder_digest_prefix(&self, object: &ObjectId, digest: &TokenDigest) -> Vec<u8> {
        self.with(&[
            b"o\0",
            object.as_str().as_bytes(),
            b"\0h\0",
            digest.to_hex().as_bytes(),
            b"\0",
        ])
    }

    /// The queue key of one waiting request's claim on `object`.
    pub(crate) fn queue_key(&self, object: &ObjectId, digest: &TokenDigest) -> Vec<u8> {
        self.with(&[
            b"o\0",
            object.as_str().as_bytes(),
            b"\0q\0",
            digest.to_hex().as_bytes(),
        ])
    }

    /// The key of `object`'s last fence.
    pub(crate) fn fence_key(&self, object: &ObjectId) -> Vec<u8> {
        self.with(&[b"f\0", object.as_str().as_bytes()])
    }

    /// The wake key of `object`: put by a downgrade so that the watch, which ignores puts of
    /// holder and queue keys, sees it.
    pub(crate) fn wake_key(&self, object: &ObjectId) -> Vec<u8> {
        self.with(&[b"w\0", object.as_str().as_bytes()])
    }

    /// Every object's wake key.
    pub(crate) fn wakes_prefix(&self) -> Vec<u8> {
        self.with(&[b"w\0"])
    }

    /// The object a wake key names.
    pub(crate) fn object_of_wake_key(&self, key: &[u8]) -> Option<ObjectId> {
        let rest = key
            .strip_prefix(self.prefix.as_slice())?
            .strip_prefix(b"w\0")?;
        ObjectId::new(std::str::from_utf8(rest).ok()?).ok()
    }

    /// The start of the listing of objects named `prefix...`.
    pub(crate) fn list_prefix(&self, prefix: &str) -> Vec<u8> {
        self.with(&[b"o\0", prefix.as_bytes()])
    }

    /// The first key after every key of `object` (where the next listing page starts).
    pub(crate) fn after_object(&self, object: &ObjectId) -> Vec<u8> {
        self.with(&[b"o\0", object.as_str().as_bytes(), b"\x01"])
    }

    /// What a key under [`Self::objects_prefix`] is.
    pub(crate) fn parse(&self, key: &[u8]) -> Option<Parsed> {
        let rest = key
            .strip_prefix(self.prefix.as_slice())?
            .strip_prefix(b"o\0")?;
        let end = rest.iter().position(|&b| b == 0)?;
        let object = ObjectId::new(std::str::from_utf8(&rest[..end]).ok()?).ok()?;
        let rest = &rest[end + 1..];
        if let Some(holder) = rest.strip_prefix(b"h\0") {
            let text = std::str::from_utf8(holder).ok()?;
            let (digest, fence) = text.split_once('\0')?;
            let value: u64 = fence.parse().ok()?;
            // Only the canonical decimal form that `holder_key` writes.
            if value == 0 || value.to_string() != fence {
                return None;
            }
            let fence = value;
            return Some(Parsed::Holder {
                object,
                digest: digest.to_string(),
                fence: Fence(fence),
            });
        }
        if let Some(digest) = rest.strip_prefix(b"q\0") {
            let digest = std::str::from_utf8(digest).ok()?;
            return Some(Parsed::Queue {
                object,
                digest: digest.to_string(),
            });
        }
        None
    }
}

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A holder of `object`.
    Holder {
        object: ObjectId,
        digest: String,
        fence: Fence,
    },
    /// A queue entry of `object`.
    Queue { object: ObjectId, digest: String },
}

impl Parsed {
    pub(crate) fn object(&self) -> &ObjectId {
        match self {
            Parsed::Holder { object, .. } | Parsed::Queue { object, .. } => object,
        }
    }
}

/// The end of the range of every key starting with `prefix` (etcd's "prefix end").
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the keyspace.
    vec![0]
}

/// A mode as records store it.
pub(crate) fn mode_char(mode: LockMode) -> char {
    match mode {
        LockMode::Exclusive => 'x',
        LockMode::Shared => 's',
    }
}

fn parse_mode(text: &str) -> Option<LockMode> {
    match text {
        "x" => Some(LockMode::Exclusive),
        "s" => Some(LockMode::Shared),
        _ => None,
    }
}

/// A holder key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HolderRecord {
    pub(crate) mode: LockMode,
    pub(crate) claimed: bool,
    pub(crate) acquired_ms: u64,
    pub(crate) ttl_ms: u64,
    pub(crate) owner: OwnerId,
}

impl HolderRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {} {} {}",
            mode_char(self.mode),
            u8::from(self.claimed),
            self.acquired_ms,
            self.ttl_ms,
            self.owner.as_str()
        )
        .into_bytes()
    }

    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.splitn(5, ' ');
        let mode = parse_mode(parts.next()?)?;
        let claimed = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let acquired_ms = parts.next()?.parse().ok()?;
        let ttl_ms = parts.next()?.parse().ok()?;
        let owner = OwnerId::new(parts.next()?).ok()?;
        Some(Self {
            mode,
            claimed,
            acquired_ms,
            ttl_ms,
            owner,
        })
    }
}

/// A queue key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueRecord {
    pub(crate) mode: LockMode,
    pub(crate) owner: OwnerId,
}

impl QueueRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        format!("{} {}", mode_char(self.mode), self.owner.as_str()).into_bytes()
    }

    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        let (mode, owner) = text.split_once(' ')?;
        Some(Self {
            mode: parse_mode(mode)?,
            owner: OwnerId::new(owner).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid")
    }

    #[test]
    fn keys_name_their_object_back() {
        let layout = KeyLayout::new("lockd/");
        let digest = TokenDigest::from_bytes(&[3u8; 32]).expect("32 bytes");
        let key = layout.holder_key(&object("a/b c"), &digest, Fence(42));
        assert!(key.starts_with(&layout.holders_prefix(&object("a/b c"))));
        assert!(key.starts_with(&layout.holder_digest_prefix(&object("a/b c"), &digest)));
        assert!(key.starts_with(&layout.object_prefix(&object("a/b c"))));
        assert_eq!(
            layout.parse(&key),
            Some(Parsed::Holder {
                object: object("a/b c"),
                digest: digest.to_hex(),
                fence: Fence(42)
            })
        );
        let queue = layout.queue_key(&object("a"), &digest);
        assert_eq!(
            layout.parse(&queue),
            Some(Parsed::Queue {
                object: object("a"),
                digest: digest.to_hex()
            })
        );
        assert_eq!(layout.parse(&layout.fence_key(&object("a"))), None);
        assert_eq!(layout.parse(&layout.wake_key(&object("a"))), None);
        assert_eq!(
            layout.object_of_wake_key(&layout.wake_key(&object("a/b"))),
            Some(object("a/b"))
        );
        assert!(layout
            .wake_key(&object("a"))
            .starts_with(&layout.wakes_prefix()));
    }

    #[test]
    fn an_objects_range_holds_no_other_objects_keys() {
        let layout = KeyLayout::new("p/");
        let digest = TokenDigest::from_bytes(&[1u8; 32]).expect("32 bytes");
        let longer = layout.holder_key(&object("ab"), &digest, Fence(1));
        assert!(!longer.starts_with(&layout.object_prefix(&object("a"))));
        assert!(longer.starts_with(&layout.list_prefix("a")));
        assert!(
            layout.after_object(&object("a")) > layout.holder_key(&object("a"), &digest, Fence(9))
        );
        assert!(
            layout.after_object(&object("a")) < layout.holder_key(&object("a "), &digest, Fence(9))
        );
    }

    #[test]
    fn records_round_trip() {
        let holder = HolderRecord {
            mode: LockMode::Shared,
            claimed: true,
            acquired_ms: 17,
            ttl_ms: 2000,
            owner: OwnerId::new("node 7").expect("valid"),
        };
        assert_eq!(HolderRecord::parse(&holder.encode()), Some(holder));
        let queue = QueueRecord {
            mode: LockMode::Exclusive,
            owner: OwnerId::new("w").expect("valid"),
        };
        assert_eq!(QueueRecord::parse(&queue.encode()), Some(queue));
        assert_eq!(HolderRecord::parse(b"y 0 1 2 o"), None);
        assert_eq!(QueueRecord::parse(b"x"), None);
    }

    #[test]
    fn prefix_ends_bound_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
