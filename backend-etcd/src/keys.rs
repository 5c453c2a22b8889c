//! The key layout: which etcd keys hold an object's holders, lock-delays, queue and fence, and
//! the values stored in them.
//!
//! With the prefix `P` (default `lockd/`), `␀` for a NUL byte (object names and owners contain
//! no control characters, so `␀` cannot occur inside them), and `S` for a grant's scope (empty
//! for an object lock, `t␀` for a subtree lock), an object `o` uses:
//!
//! * `P o␀<o>␀S h␀<digest hex>␀<fence>`: one key per holder, value a [`HolderRecord`]
//!   (`"<mode> <claimed> <acquired_ms> <ttl_ms> <delay_ms> <owner>"`), attached to the
//!   grant's etcd lease: etcd deletes it when the lease expires.
//! * `P o␀<o>␀S d␀<digest hex>␀<fence>`: the lock-delay marker of a holder granted with a
//!   lock-delay, value a copy of the holder's record, attached to a second lease that outlives
//!   the holder's by the lock-delay: while the holder key is gone and the marker is not, the
//!   delay is in force.
//! * `P q␀<o>␀S q␀<digest hex>`: one key per waiting request (the digest of its claim on
//!   `o`), value `"<mode> <owner>"`, attached to the store's current queue lease. The
//!   request's ticket is the key's `create_revision`.
//! * `P f␀<o>`: the last fence issued for `o` (decimal), without a lease.
//! * `P w␀<o>`: put (on the holder's lease, value `t` for a subtree holder) by each downgrade of
//!   a holder of `o`, for the watch, which sees only deletions of holder and queue keys.
//!
//! So the scope of every key can be read back from the key alone (the watch sees only keys of
//! deletions), and the keys that a claim on `Q` must look at are a few ranges:
//!
//! * `P o␀<Q>␀` and `P q␀<Q>␀`: everything on `Q` itself, in either scope;
//! * `P o␀<A>␀t␀` and `P q␀<A>␀t␀` for each ancestor `A` of `Q`: the subtree locks and subtree
//!   waiters covering `Q`;
//! * for a subtree claim, `[P o␀<Q>/, P o␀<Q>0)` and `[P q␀<Q>/, P q␀<Q>0)`: everything on
//!   every object under `Q` (`0` is the byte after `/`, and no id contains `␀`, so these ranges
//!   hold exactly the ids starting with `Q/`: see [`lockcore::path::subtree_range`]).
//!
//! Holders and lock-delays live apart from queue entries (`o` and `q`), so a grant can guard
//! what it read about holders without being disturbed by waiters joining queues.
//! The holders of every object whose name starts with `p` lie in the range `P o␀<p>`, which
//! `list` pages through.

use lockcore::{Fence, LockMode, LockScope, ObjectId, OwnerId, TokenDigest};

/// Which of an object's keys a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// A holder.
    Holder,
    /// A holder's lock-delay marker.
    Delay,
    /// A waiting request's queue entry.
    Queue,
}

impl Kind {
    fn tag(self) -> &'static [u8] {
        match self {
            Kind::Holder => b"h\0",
            Kind::Delay => b"d\0",
            Kind::Queue => b"q\0",
        }
    }

    /// The key space the kind lives in: holders and markers in `o`, queue entries in `q`.
    fn space(self) -> &'static [u8] {
        match self {
            Kind::Holder | Kind::Delay => b"o\0",
            Kind::Queue => b"q\0",
        }
    }
}

fn scope_tag(scope: LockScope) -> &'static [u8] {
    match scope {
        LockScope::Object => b"",
        LockScope::Subtree => b"t\0",
    }
}

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

    /// Every holder and lock-delay key (the watch covers it).
    pub(crate) fn holders_space(&self) -> Vec<u8> {
        self.with(&[Kind::Holder.space()])
    }

    /// Every queue key (the watch covers it).
    pub(crate) fn queues_space(&self) -> Vec<u8> {
        self.with(&[Kind::Queue.space()])
    }

    /// The range (a prefix) of everything of `kind`'s space on `object`, in either scope.
    pub(crate) fn on_object(&self, space: Kind, object: &ObjectId) -> Vec<u8> {
        self.with(&[space.space(), object.as_str().as_bytes(), b"\0"])
    }

    /// The range (a prefix) of the subtree-scoped keys of `kind`'s space on `object`: what an
    /// ancestor contributes to a claim below it.
    pub(crate) fn subtree_scoped_on(&self, space: Kind, object: &ObjectId) -> Vec<u8> {
        self.with(&[
            space.space(),
            object.as_str().as_bytes(),
            b"\0",
            scope_tag(LockScope::Subtree),
        ])
    }

    /// The range `[start, end)` of `kind`'s space on every object strictly under `object`.
    pub(crate) fn under(&self, space: Kind, object: &ObjectId) -> (Vec<u8>, Vec<u8>) {
        let (low, high) = lockcore::path::subtree_range(object.as_str());
        (
            self.with(&[space.space(), low.as_bytes()]),
            self.with(&[space.space(), high.as_bytes()]),
        )
    }

    /// The range (a prefix) of `object`'s holders in `scope`.
    pub(crate) fn holders_in(&self, object: &ObjectId, scope: LockScope) -> Vec<u8> {
        self.with(&[
            Kind::Holder.space(),
            object.as_str().as_bytes(),
            b"\0",
            scope_tag(scope),
            Kind::Holder.tag(),
        ])
    }

    fn fenced_key(
        &self,
        kind: Kind,
        object: &ObjectId,
        scope: LockScope,
        digest: &TokenDigest,
        fence: Fence,
    ) -> Vec<u8> {
        let mut key = self.holder_digest_prefix_of(kind, object, scope, digest);
        key.extend_from_slice(fence.get().to_string().as_bytes());
        key
    }

    fn holder_digest_prefix_of(
        &self,
        kind: Kind,
        object: &ObjectId,
        scope: LockScope,
        digest: &TokenDigest,
    ) -> Vec<u8> {
        self.with(&[
            kind.space(),
            object.as_str().as_bytes(),
            b"\0",
            scope_tag(scope),
            kind.tag(),
            digest.to_hex().as_bytes(),
            b"\0",
        ])
    }

    /// The key of one holder.
    pub(crate) fn holder_key(
        &self,
        object: &ObjectId,
        scope: LockScope,
        digest: &TokenDigest,
        fence: Fence,
    ) -> Vec<u8> {
        self.fenced_key(Kind::Holder, object, scope, digest, fence)
    }

    /// The key of the lock-delay marker of the holder `digest_hex` (its digest in hex, as
    /// [`Parsed::digest`]) of `object` with `fence`.
    pub(crate) fn delay_key_hex(
        &self,
        object: &ObjectId,
        scope: LockScope,
        digest_hex: &str,
        fence: Fence,
    ) -> Vec<u8> {
        self.with(&[
            Kind::Delay.space(),
            object.as_str().as_bytes(),
            b"\0",
            scope_tag(scope),
            Kind::Delay.tag(),
            digest_hex.as_bytes(),
            b"\0",
            fence.get().to_string().as_bytes(),
        ])
    }

    /// The key of one holder's lock-delay marker.
    pub(crate) fn delay_key(
        &self,
        object: &ObjectId,
        scope: LockScope,
        digest: &TokenDigest,
        fence: Fence,
    ) -> Vec<u8> {
        self.fenced_key(Kind::Delay, object, scope, digest, fence)
    }

    /// The start of the keys of `object`'s holders in `scope` with `digest`.
    pub(crate) fn holder_digest_prefix(
        &self,
        object: &ObjectId,
        scope: LockScope,
        digest: &TokenDigest,
    ) -> Vec<u8> {
        self.holder_digest_prefix_of(Kind::Holder, object, scope, digest)
    }

    /// The queue key of one waiting request's claim on `object`.
    pub(crate) fn queue_key(
        &self,
        object: &ObjectId,
        scope: LockScope,
        digest: &TokenDigest,
    ) -> Vec<u8> {
        self.with(&[
            Kind::Queue.space(),
            object.as_str().as_bytes(),
            b"\0",
            scope_tag(scope),
            Kind::Queue.tag(),
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

    /// The value of a wake key: what the downgraded holder covered.
    pub(crate) fn wake_value(scope: LockScope) -> &'static [u8] {
        match scope {
            LockScope::Object => b"",
            LockScope::Subtree => b"t",
        }
    }

    /// Every object's wake key.
    pub(crate) fn wakes_prefix(&self) -> Vec<u8> {
        self.with(&[b"w\0"])
    }

    /// The object a wake key names, and the scope its value says was downgraded.
    pub(crate) fn parse_wake(&self, key: &[u8], value: &[u8]) -> Option<(ObjectId, LockScope)> {
        let rest = key
            .strip_prefix(self.prefix.as_slice())?
            .strip_prefix(b"w\0")?;
        let object = ObjectId::new(std::str::from_utf8(rest).ok()?).ok()?;
        let scope = if value == Self::wake_value(LockScope::Subtree) {
            LockScope::Subtree
        } else {
            LockScope::Object
        };
        Some((object, scope))
    }

    /// The start of the listing of objects named `prefix...`.
    pub(crate) fn list_prefix(&self, prefix: &str) -> Vec<u8> {
        self.with(&[Kind::Holder.space(), prefix.as_bytes()])
    }

    /// The first key after every holder key of `object` (where the next listing page starts).
    pub(crate) fn after_object(&self, object: &ObjectId) -> Vec<u8> {
        self.with(&[Kind::Holder.space(), object.as_str().as_bytes(), b"\x01"])
    }

    /// What a holder, lock-delay or queue key is.
    pub(crate) fn parse(&self, key: &[u8]) -> Option<Parsed> {
        let rest = key.strip_prefix(self.prefix.as_slice())?;
        let (space, rest) = if let Some(rest) = rest.strip_prefix(b"o\0") {
            (Kind::Holder, rest)
        } else {
            (Kind::Queue, rest.strip_prefix(b"q\0")?)
        };
        let end = rest.iter().position(|&b| b == 0)?;
        let object = ObjectId::new(std::str::from_utf8(&rest[..end]).ok()?).ok()?;
        let rest = &rest[end + 1..];
        let (scope, rest) = match rest.strip_prefix(scope_tag(LockScope::Subtree)) {
            Some(rest) => (LockScope::Subtree, rest),
            None => (LockScope::Object, rest),
        };
        let kind = [Kind::Holder, Kind::Delay, Kind::Queue]
            .into_iter()
            .find(|k| k.space() == space.space() && rest.starts_with(k.tag()))?;
        let text = std::str::from_utf8(&rest[kind.tag().len()..]).ok()?;
        let (digest, fence) = match kind {
            Kind::Queue => (text, None),
            Kind::Holder | Kind::Delay => {
                let (digest, fence) = text.split_once('\0')?;
                let value: u64 = fence.parse().ok()?;
                // Only the canonical decimal form that `holder_key` writes.
                if value == 0 || value.to_string() != fence {
                    return None;
                }
                (digest, Some(Fence(value)))
            }
        };
        if digest.is_empty() || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Parsed {
            object,
            scope,
            kind,
            digest: digest.to_string(),
            fence,
        })
    }
}

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// The object.
    pub(crate) object: ObjectId,
    /// The scope of the holder, lock-delay or queue entry.
    pub(crate) scope: LockScope,
    /// Which key of the object it is.
    pub(crate) kind: Kind,
    /// The digest (hex) of the holder's token, or of the waiting claim's.
    pub(crate) digest: String,
    /// The holder's fence (holders and lock-delays only).
    pub(crate) fence: Option<Fence>,
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

/// A holder key's value (and its lock-delay marker's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HolderRecord {
    pub(crate) mode: LockMode,
    pub(crate) claimed: bool,
    /// When granted, on the granting lockd's wall clock: for display only.
    pub(crate) acquired_ms: u64,
    pub(crate) ttl_ms: u64,
    /// The lock-delay the grant was made with (zero for none).
    pub(crate) delay_ms: u64,
    pub(crate) owner: OwnerId,
}

impl HolderRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {} {} {} {}",
            mode_char(self.mode),
            u8::from(self.claimed),
            self.acquired_ms,
            self.ttl_ms,
            self.delay_ms,
            self.owner.as_str()
        )
        .into_bytes()
    }

    pub(crate) fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.splitn(6, ' ');
        let mode = parse_mode(parts.next()?)?;
        let claimed = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let acquired_ms = parts.next()?.parse().ok()?;
        let ttl_ms = parts.next()?.parse().ok()?;
        let delay_ms = parts.next()?.parse().ok()?;
        let owner = OwnerId::new(parts.next()?).ok()?;
        Some(Self {
            mode,
            claimed,
            acquired_ms,
            ttl_ms,
            delay_ms,
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
    use LockScope::{Object, Subtree};

    fn object(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid")
    }

    fn digest(byte: u8) -> TokenDigest {
        TokenDigest::from_bytes(&[byte; 32]).expect("32 bytes")
    }

    #[test]
    fn keys_name_their_object_scope_and_kind_back() {
        let layout = KeyLayout::new("lockd/");
        let o = object("a/b c");
        for scope in [Object, Subtree] {
            let key = layout.holder_key(&o, scope, &digest(3), Fence(42));
            assert!(key.starts_with(&layout.holders_in(&o, scope)));
            assert!(key.starts_with(&layout.holder_digest_prefix(&o, scope, &digest(3))));
            assert!(key.starts_with(&layout.on_object(Kind::Holder, &o)));
            assert_eq!(
                layout.parse(&key),
                Some(Parsed {
                    object: o.clone(),
                    scope,
                    kind: Kind::Holder,
                    digest: digest(3).to_hex(),
                    fence: Some(Fence(42)),
                })
            );
            let delay = layout.delay_key(&o, scope, &digest(3), Fence(42));
            assert_eq!(
                layout.delay_key_hex(&o, scope, &digest(3).to_hex(), Fence(42)),
                delay
            );
            assert!(delay.starts_with(&layout.on_object(Kind::Delay, &o)));
            assert!(!delay.starts_with(&layout.holders_in(&o, scope)));
            assert_eq!(
                layout.parse(&delay).map(|p| (p.kind, p.scope)),
                Some((Kind::Delay, scope))
            );
            let queue = layout.queue_key(&o, scope, &digest(4));
            assert!(queue.starts_with(&layout.on_object(Kind::Queue, &o)));
            assert_eq!(
                layout.parse(&queue),
                Some(Parsed {
                    object: o.clone(),
                    scope,
                    kind: Kind::Queue,
                    digest: digest(4).to_hex(),
                    fence: None,
                })
            );
            // Only subtree-scoped keys lie in what an ancestor contributes.
            for key in [key, delay] {
                assert_eq!(
                    key.starts_with(&layout.subtree_scoped_on(Kind::Holder, &o)),
                    scope == Subtree
                );
            }
            assert_eq!(
                queue.starts_with(&layout.subtree_scoped_on(Kind::Queue, &o)),
                scope == Subtree
            );
        }
        assert_eq!(layout.parse(&layout.fence_key(&o)), None);
        assert_eq!(layout.parse(&layout.wake_key(&o)), None);
        assert_eq!(
            layout.parse_wake(&layout.wake_key(&o), KeyLayout::wake_value(Subtree)),
            Some((o.clone(), Subtree))
        );
        assert_eq!(
            layout.parse_wake(&layout.wake_key(&o), KeyLayout::wake_value(Object)),
            Some((o.clone(), Object))
        );
        assert!(layout.wake_key(&o).starts_with(&layout.wakes_prefix()));
        assert!(layout
            .holder_key(&o, Object, &digest(1), Fence(1))
            .starts_with(&layout.holders_space()));
        assert!(layout
            .queue_key(&o, Object, &digest(1))
            .starts_with(&layout.queues_space()));
    }

    #[test]
    fn the_range_under_an_object_holds_exactly_the_ids_under_it() {
        let layout = KeyLayout::new("p/");
        let within = |key: &[u8], (low, high): &(Vec<u8>, Vec<u8>)| {
            key >= low.as_slice() && key < high.as_slice()
        };
        for space in [Kind::Holder, Kind::Queue] {
            let under = layout.under(space, &object("/vol/a"));
            let key_of = |name: &str| match space {
                Kind::Queue => layout.queue_key(&object(name), Subtree, &digest(1)),
                _ => layout.holder_key(&object(name), Object, &digest(1), Fence(7)),
            };
            for inside in ["/vol/a/x", "/vol/a/x/y", "/vol/a/-", "/vol/a/\u{ff}"] {
                assert!(within(&key_of(inside), &under), "{inside}");
            }
            for outside in [
                "/vol/a", "/vol/ab", "/vol/a-b", "/vol/a.b", "/vol/b/x", "/vol",
            ] {
                assert!(!within(&key_of(outside), &under), "{outside}");
            }
        }
    }

    #[test]
    fn an_objects_range_holds_no_other_objects_keys() {
        let layout = KeyLayout::new("p/");
        let longer = layout.holder_key(&object("ab"), Object, &digest(1), Fence(1));
        assert!(!longer.starts_with(&layout.on_object(Kind::Holder, &object("a"))));
        assert!(longer.starts_with(&layout.list_prefix("a")));
        for scope in [Object, Subtree] {
            let key = layout.holder_key(&object("a"), scope, &digest(1), Fence(9));
            assert!(layout.after_object(&object("a")) > key);
            let next = layout.holder_key(&object("a "), scope, &digest(1), Fence(9));
            assert!(layout.after_object(&object("a")) < next);
        }
    }

    #[test]
    fn foreign_keys_parse_as_nothing() {
        let layout = KeyLayout::new("p/");
        for key in [
            &b"p/o\0a\0x\0abc\x001"[..],
            b"p/o\0a\0q\0abc",
            b"p/q\0a\0h\0abc\x001",
            b"p/o\0a\0h\0abc\x0001",
            b"p/o\0a\0h\0zz\x001",
            b"p/o\0a\0h\0abc",
            b"other/o\0a\0h\0abc\x001",
        ] {
            assert_eq!(layout.parse(key), None, "{key:?}");
        }
    }

    #[test]
    fn records_round_trip() {
        let holder = HolderRecord {
            mode: LockMode::Shared,
            claimed: true,
            acquired_ms: 17,
            ttl_ms: 2000,
            delay_ms: 1500,
            owner: OwnerId::new("node 7").expect("valid"),
        };
        assert_eq!(HolderRecord::parse(&holder.encode()), Some(holder));
        let queue = QueueRecord {
            mode: LockMode::Exclusive,
            owner: OwnerId::new("w").expect("valid"),
        };
        assert_eq!(QueueRecord::parse(&queue.encode()), Some(queue));
        assert_eq!(HolderRecord::parse(b"y 0 1 2 0 o"), None);
        assert_eq!(HolderRecord::parse(b"x 0 1 2 o"), None);
        assert_eq!(QueueRecord::parse(b"x"), None);
    }

    #[test]
    fn prefix_ends_bound_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
