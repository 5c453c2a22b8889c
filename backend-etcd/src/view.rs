//! What one decision read, and the rules of [`lockcore::store`] applied to it: which holder,
//! lock-delay or queue entry blocks each claim, across the tree of ids.
//!
//! A claim on `Q` reads `Q`'s holders, lock-delays and queue entries, the subtree-scoped ones of
//! `Q`'s ancestors and, for a subtree claim, everything under `Q` (see [`crate::keys`]). Every
//! item read lands in one [`View`]; [`judge`] then tests each item against each claim with
//! [`lockcore::path::conflicts`], so the same rule decides for items found on the object, above
//! it or below it.

use std::collections::{BTreeMap, HashSet};

use etcd_client::KeyValue;
use lockcore::store::{Blocker, Claim, MAX_BLOCKERS};
use lockcore::{Fence, LockMode, LockResult, LockScope, ObjectId};

use crate::error::malformed;
use crate::keys::{HolderRecord, KeyLayout, Kind, QueueRecord};

/// One holder key (or lock-delay marker key) as read.
#[derive(Debug, Clone)]
pub(crate) struct HolderKv {
    pub(crate) key: Vec<u8>,
    pub(crate) object: ObjectId,
    pub(crate) scope: LockScope,
    pub(crate) digest: String,
    pub(crate) fence: Fence,
    pub(crate) record: HolderRecord,
    pub(crate) mod_revision: i64,
    pub(crate) lease: i64,
}

impl HolderKv {
    /// What the holder (or the lock-delay) is, for pairing markers with their holders.
    pub(crate) fn identity(&self) -> (&ObjectId, LockScope, &str, Fence) {
        (&self.object, self.scope, &self.digest, self.fence)
    }
}

/// One queue key as read.
#[derive(Debug, Clone)]
pub(crate) struct EntryKv {
    pub(crate) key: Vec<u8>,
    pub(crate) object: ObjectId,
    pub(crate) scope: LockScope,
    pub(crate) record: QueueRecord,
    pub(crate) create_revision: i64,
    pub(crate) lease: i64,
}

/// Every holder, lock-delay marker and queue entry one read returned (each once, however many
/// of the ranges read it fell in).
#[derive(Debug, Default)]
pub(crate) struct View {
    pub(crate) holders: Vec<HolderKv>,
    pub(crate) markers: Vec<HolderKv>,
    pub(crate) entries: Vec<EntryKv>,
    seen: HashSet<Vec<u8>>,
}

impl View {
    /// Adds the holder, lock-delay and queue keys of one range read.
    pub(crate) fn absorb(&mut self, keys: &KeyLayout, kvs: &[KeyValue]) -> LockResult<()> {
        for kv in kvs {
            if !self.seen.insert(kv.key().to_vec()) {
                continue;
            }
            let parsed = keys.parse(kv.key()).ok_or_else(|| malformed("key"))?;
            match (parsed.kind, parsed.fence) {
                (Kind::Holder, Some(_)) => self.holders.push(holder_kv(keys, kv)?),
                (Kind::Delay, Some(_)) => self.markers.push(holder_kv(keys, kv)?),
                (Kind::Queue, None) => {
                    let record =
                        QueueRecord::parse(kv.value()).ok_or_else(|| malformed("queue entry"))?;
                    self.entries.push(EntryKv {
                        key: kv.key().to_vec(),
                        object: parsed.object,
                        scope: parsed.scope,
                        record,
                        create_revision: kv.create_revision(),
                        lease: kv.lease(),
                    });
                }
                _ => return Err(malformed("key")),
            }
        }
        Ok(())
    }

    /// The lock-delays in force: markers whose holder key is gone (its lease expired; a release
    /// deletes the marker with the holder).
    pub(crate) fn lock_delays(&self) -> Vec<&HolderKv> {
        let holders: HashSet<_> = self.holders.iter().map(HolderKv::identity).collect();
        self.markers
            .iter()
            .filter(|m| !holders.contains(&m.identity()))
            .collect()
    }
}

/// A holder (or lock-delay marker) key and its value.
pub(crate) fn holder_kv(keys: &KeyLayout, kv: &KeyValue) -> LockResult<HolderKv> {
    let parsed = keys.parse(kv.key()).ok_or_else(|| malformed("key"))?;
    let (Kind::Holder | Kind::Delay, Some(fence)) = (parsed.kind, parsed.fence) else {
        return Err(malformed("holder key"));
    };
    Ok(HolderKv {
        key: kv.key().to_vec(),
        object: parsed.object,
        scope: parsed.scope,
        digest: parsed.digest,
        fence,
        record: HolderRecord::parse(kv.value()).ok_or_else(|| malformed("holder"))?,
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    })
}

/// Whether something on `object` in `scope` and `mode` conflicts with `claim`.
pub(crate) fn conflicts_with(
    object: &ObjectId,
    scope: LockScope,
    mode: LockMode,
    claim: &Claim,
) -> bool {
    lockcore::path::conflicts(
        (object.as_str(), scope, mode),
        (claim.object.as_str(), claim.scope, claim.mode),
    )
}

/// What blocks one claim, by precedence: a live holder, else lock-delays in force, else an
/// earlier queue entry.
#[derive(Debug)]
pub(crate) enum Block<'v> {
    /// The conflicting holder with the longest TTL.
    Held(&'v HolderKv),
    /// Every conflicting lock-delay in force (the one ending last is reported).
    Delayed(Vec<&'v HolderKv>),
    /// An earlier conflicting queue entry.
    Queued(&'v EntryKv),
}

/// The rules applied to a view.
#[derive(Debug)]
pub(crate) struct Judged<'v> {
    /// Per claim, the holder that already has its digest (a retry of a granted request).
    pub(crate) replays: Vec<Option<&'v HolderKv>>,
    /// Per blocked claim (by index), what blocks it.
    pub(crate) blocks: Vec<(usize, Block<'v>)>,
    /// The live holders in conflict with any claim (when asked for), at most
    /// [`MAX_BLOCKERS`], each once.
    pub(crate) blockers: Vec<Blocker>,
}

/// Decides every claim against `view`: `own_queue_keys[i]` is claim `i`'s own queue key,
/// `ticket` the request's (entries with a smaller create revision come first; without a
/// ticket, every entry does).
pub(crate) fn judge<'v>(
    view: &'v View,
    claims: &[Claim],
    own_queue_keys: &[Vec<u8>],
    ticket: Option<i64>,
    want_blockers: bool,
) -> Judged<'v> {
    let lock_delays = view.lock_delays();
    let mut replays = Vec::with_capacity(claims.len());
    let mut blocks = Vec::new();
    let mut blockers: BTreeMap<&[u8], Blocker> = BTreeMap::new();
    for (index, claim) in claims.iter().enumerate() {
        let digest = claim.digest.to_hex();
        let replay = view
            .holders
            .iter()
            .find(|h| h.object == claim.object && h.scope == claim.scope && h.digest == digest);
        replays.push(replay);
        if replay.is_some() {
            continue;
        }
        let held: Vec<&HolderKv> = view
            .holders
            .iter()
            .filter(|h| conflicts_with(&h.object, h.scope, h.record.mode, claim))
            .collect();
        if want_blockers {
            for h in &held {
                let blocker = blockers.entry(&h.key).or_insert_with(|| Blocker {
                    object: h.object.clone(),
                    owner: h.record.owner.clone(),
                    fence: h.fence,
                    wanted: claim.mode,
                });
                if claim.mode == LockMode::Exclusive {
                    blocker.wanted = LockMode::Exclusive;
                }
            }
        }
        if let Some(h) = held.iter().max_by_key(|h| h.record.ttl_ms) {
            blocks.push((index, Block::Held(h)));
            continue;
        }
        let delayed: Vec<&HolderKv> = lock_delays
            .iter()
            .copied()
            .filter(|m| conflicts_with(&m.object, m.scope, m.record.mode, claim))
            .collect();
        if !delayed.is_empty() {
            blocks.push((index, Block::Delayed(delayed)));
            continue;
        }
        let own_key = own_queue_keys.get(index);
        let earlier = view.entries.iter().find(|e| {
            Some(&e.key) != own_key
                && ticket.is_none_or(|t| e.create_revision < t)
                && conflicts_with(&e.object, e.scope, e.record.mode, claim)
        });
        if let Some(entry) = earlier {
            blocks.push((index, Block::Queued(entry)));
        }
    }
    Judged {
        replays,
        blocks,
        blockers: blockers.into_values().take(MAX_BLOCKERS).collect(),
    }
}

/// At most `budget` key ranges covering every range of `ranges` (half-open `[start, end)`):
/// overlapping and touching ranges are joined, then, while too many remain, neighbours are
/// joined across the narrowest gaps between them (the longest common prefix of the gap's
/// ends: the closest in the tree). A joined range also covers the keys in the gaps, which no
/// decision read: comparing them can only fail a write that would have been right (it is then
/// retried), never let a wrong one through.
pub(crate) fn bound_ranges(
    mut ranges: Vec<(Vec<u8>, Vec<u8>)>,
    budget: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    ranges.sort();
    let mut joined: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match joined.last_mut() {
            Some(last) if start <= last.1 => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => joined.push((start, end)),
        }
    }
    let budget = budget.max(1);
    if joined.len() <= budget {
        return joined;
    }
    // Gap `i` lies between range `i` and range `i + 1`; close the narrowest ones.
    let mut gaps: Vec<(usize, usize)> = joined
        .windows(2)
        .enumerate()
        .map(|(i, pair)| (common_prefix(&pair[0].1, &pair[1].0), i))
        .collect();
    gaps.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut closed = vec![false; joined.len()];
    for &(_, gap) in gaps.iter().take(joined.len() - budget) {
        closed[gap] = true;
    }
    let mut merged: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(budget);
    let mut close_previous = false;
    for ((start, end), close_next) in joined.into_iter().zip(closed) {
        match merged.last_mut() {
            Some(last) if close_previous => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => merged.push((start, end)),
        }
        close_previous = close_next;
    }
    merged
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockcore::{OwnerId, TokenDigest};
    use LockMode::{Exclusive, Shared};
    use LockScope::{Object, Subtree};

    fn object(name: &str) -> ObjectId {
        ObjectId::new(name).expect("valid")
    }

    fn digest(byte: u8) -> TokenDigest {
        TokenDigest::from_bytes(&[byte; 32]).expect("32 bytes")
    }

    fn record(mode: LockMode, owner: &str) -> HolderRecord {
        HolderRecord {
            mode,
            claimed: false,
            acquired_ms: 0,
            ttl_ms: 10_000,
            delay_ms: 0,
            owner: OwnerId::new(owner).expect("valid"),
        }
    }

    fn held(name: &str, scope: LockScope, mode: LockMode, owner: &str, fence: u64) -> HolderKv {
        HolderKv {
            key: format!("{name} {scope} {owner} {fence}").into_bytes(),
            object: object(name),
            scope,
            digest: owner.to_string(),
            fence: Fence(fence),
            record: record(mode, owner),
            mod_revision: 1,
            lease: 1,
        }
    }

    fn queued(name: &str, scope: LockScope, mode: LockMode, owner: &str, at: i64) -> EntryKv {
        EntryKv {
            key: format!("q {name} {scope} {owner}").into_bytes(),
            object: object(name),
            scope,
            record: QueueRecord {
                mode,
                owner: OwnerId::new(owner).expect("valid"),
            },
            create_revision: at,
            lease: 1,
        }
    }

    fn claim(name: &str, scope: LockScope, mode: LockMode, byte: u8) -> Claim {
        Claim {
            object: object(name),
            mode,
            scope,
            digest: digest(byte),
        }
    }

    fn blocked_by(view: &View, claim: Claim) -> Option<String> {
        let judged = judge(view, &[claim], &[], None, false);
        judged.blocks.first().map(|(_, block)| match block {
            Block::Held(h) => format!("held by {}", h.record.owner),
            Block::Delayed(ms) => format!("delayed by {}", ms[0].record.owner),
            Block::Queued(e) => format!("queued {}", e.record.owner),
        })
    }

    #[test]
    fn a_subtree_holder_blocks_what_it_covers_and_nothing_else() {
        let view = View {
            holders: vec![held("/vol/a", Subtree, Exclusive, "renamer", 5)],
            ..View::default()
        };
        for covered in ["/vol/a", "/vol/a/x", "/vol/a/x/y"] {
            assert_eq!(
                blocked_by(&view, claim(covered, Object, Shared, 1)).as_deref(),
                Some("held by renamer"),
                "{covered}"
            );
        }
        assert_eq!(
            blocked_by(&view, claim("/vol", Subtree, Shared, 1)).as_deref(),
            Some("held by renamer")
        );
        for free in ["/vol/ab", "/vol", "/vol/b/x"] {
            assert_eq!(blocked_by(&view, claim(free, Object, Exclusive, 1)), None);
        }
    }

    #[test]
    fn a_subtree_claim_is_blocked_by_holders_under_it_in_conflicting_modes_only() {
        let view = View {
            holders: vec![
                held("/vol/a/x/y", Object, Shared, "reader", 3),
                held("/vol/b/z", Object, Exclusive, "writer", 4),
            ],
            ..View::default()
        };
        assert_eq!(
            blocked_by(&view, claim("/vol/a", Subtree, Shared, 1)),
            None,
            "a shared snapshot admits shared locks below it"
        );
        assert_eq!(
            blocked_by(&view, claim("/vol/a", Subtree, Exclusive, 1)).as_deref(),
            Some("held by reader")
        );
        assert_eq!(
            blocked_by(&view, claim("/vol", Subtree, Shared, 1)).as_deref(),
            Some("held by writer")
        );
        assert_eq!(
            blocked_by(&view, claim("/vol/a", Object, Exclusive, 1)),
            None,
            "an object lock covers nothing under it"
        );
    }

    #[test]
    fn a_marker_without_its_holder_is_a_lock_delay_in_its_mode_and_scope() {
        let gone = held("/vol/a", Subtree, Shared, "lost", 9);
        let mut view = View {
            markers: vec![gone.clone()],
            ..View::default()
        };
        assert_eq!(
            blocked_by(&view, claim("/vol/a/f", Object, Exclusive, 1)).as_deref(),
            Some("delayed by lost")
        );
        assert_eq!(
            blocked_by(&view, claim("/vol/a/f", Object, Shared, 1)),
            None,
            "an expired shared lease delays exclusive claims only"
        );
        assert_eq!(
            blocked_by(&view, claim("/vol/b", Object, Exclusive, 1)),
            None
        );
        // While its holder lives, the marker is dormant: the holder blocks.
        view.holders.push(gone);
        assert_eq!(view.lock_delays().len(), 0);
        assert_eq!(
            blocked_by(&view, claim("/vol/a/f", Object, Exclusive, 1)).as_deref(),
            Some("held by lost")
        );
    }

    #[test]
    fn queue_entries_block_across_the_tree_by_ticket() {
        let view = View {
            entries: vec![
                queued("/vol/a", Subtree, Exclusive, "renamer", 10),
                queued("/vol/a/x", Object, Shared, "reader", 20),
            ],
            ..View::default()
        };
        let write = claim("/vol/a/x", Object, Exclusive, 1);
        let judged = judge(&view, std::slice::from_ref(&write), &[], Some(15), false);
        assert!(matches!(
            judged.blocks.as_slice(),
            [(0, Block::Queued(e))] if e.record.owner.as_str() == "renamer"
        ));
        let judged = judge(&view, std::slice::from_ref(&write), &[], Some(5), false);
        assert!(
            judged.blocks.is_empty(),
            "a request is behind later waiters"
        );
        // Its own entry never blocks a request.
        let own = vec![view.entries[1].key.clone()];
        let read = claim("/vol/a/x", Object, Shared, 2);
        let judged = judge(&view, &[read], &own, Some(20), false);
        assert!(matches!(
            judged.blocks.as_slice(),
            [(0, Block::Queued(e))] if e.record.owner.as_str() == "renamer"
        ));
    }

    #[test]
    fn blockers_are_every_conflicting_holder_once_with_the_strongest_wanted_mode() {
        let view = View {
            holders: vec![
                held("/vol", Subtree, Shared, "snapshot", 1),
                held("/vol/a", Object, Shared, "reader", 2),
                held("/vol/b", Object, Shared, "other", 3),
            ],
            ..View::default()
        };
        let claims = [
            claim("/vol/a", Object, Exclusive, 1),
            claim("/vol/c", Object, Exclusive, 2),
        ];
        let judged = judge(&view, &claims, &[], None, true);
        let mut found: Vec<(String, LockMode)> = judged
            .blockers
            .iter()
            .map(|b| (b.owner.to_string(), b.wanted))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            found,
            [
                ("reader".to_string(), Exclusive),
                ("snapshot".to_string(), Exclusive)
            ]
        );
        assert!(judge(&view, &claims, &[], None, false).blockers.is_empty());
    }

    #[test]
    fn a_retry_of_a_granted_claim_is_a_replay_not_a_conflict() {
        let mut mine = held("/vol/a", Subtree, Exclusive, "me", 7);
        mine.digest = digest(1).to_hex();
        let view = View {
            holders: vec![mine],
            ..View::default()
        };
        let judged = judge(
            &view,
            &[claim("/vol/a", Subtree, Exclusive, 1)],
            &[],
            None,
            false,
        );
        assert!(judged.replays[0].is_some());
        assert!(judged.blocks.is_empty());
    }

    #[test]
    fn ranges_are_joined_then_merged_down_to_the_budget() {
        let r = |a: &str, b: &str| (a.as_bytes().to_vec(), b.as_bytes().to_vec());
        assert_eq!(
            bound_ranges(vec![r("b", "d"), r("a", "b"), r("c", "e"), r("x", "y")], 10),
            [r("a", "e"), r("x", "y")]
        );
        let merged = bound_ranges(
            vec![r("/v/a1", "/v/a2"), r("/v/a3", "/v/a4"), r("/w", "/x")],
            2,
        );
        assert_eq!(merged, [r("/v/a1", "/v/a4"), r("/w", "/x")]);
        let all = bound_ranges(vec![r("a", "b"), r("c", "d"), r("e", "f")], 0);
        assert_eq!(all, [r("a", "f")]);
    }

    #[test]
    fn bounded_ranges_cover_every_range_within_the_budget() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for budget in [1, 3, 10, 120] {
            let ranges: Vec<(Vec<u8>, Vec<u8>)> = (0..300)
                .map(|_| {
                    let start = format!("/{}/{}", next() % 7, next() % 1000).into_bytes();
                    let mut end = start.clone();
                    end.push(b'0' + (next() % 3) as u8);
                    (start, end)
                })
                .collect();
            let bounded = bound_ranges(ranges.clone(), budget);
            assert!(bounded.len() <= budget);
            assert!(bounded.windows(2).all(|w| w[0].1 < w[1].0), "sorted, apart");
            for (start, end) in &ranges {
                assert!(
                    bounded.iter().any(|(s, e)| s <= start && end <= e),
                    "{start:?}..{end:?} is not covered"
                );
            }
        }
    }
}
