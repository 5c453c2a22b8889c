//! The sweeper's deadlines: an indexed binary min-heap of lease expiries.
//!
//! Each held lock owns one timer node, named by a stable [`TimerId`] that its map entry keeps.
//! The heap orders nodes by deadline; a node knows its position in the heap, so a release removes
//! its lock's deadline in `O(log n)` (usually `O(1)`: the newest deadlines sit at the bottom)
//! instead of leaving a stale item behind. The sweeper pops due nodes, which then stay allocated
//! but out of the heap ("fired") until the sweeper has looked at the lock: it either frees the
//! node with the expired lock or puts it back with the renewed deadline.
//!
//! Ownership rule that keeps this consistent without a global lock: a node is freed only by
//! whoever removes the map entry that owns it, and re-armed only under that entry's shard lock.
//! Lock order is always map shard, then this structure's mutex; never the other way round.

use lockcore::ObjectId;

/// Stable name of a timer node (an index into the node slab).
pub(crate) type TimerId = u32;

/// `Node::pos` of a node that is allocated but not in the heap (handed to the sweeper).
const FIRED: u32 = u32::MAX;
/// End of the free list.
const NONE: u32 = u32::MAX;

/// One heap slot: a deadline and the node it belongs to (16 bytes).
#[derive(Debug, Clone, Copy)]
struct Slot {
    deadline: u64,
    id: TimerId,
}

/// One node of the slab: the object whose lease it times, and its heap position (or, when free,
/// the next free node).
#[derive(Debug)]
struct Node {
    object: Option<ObjectId>,
    pos: u32,
}

/// The slab is full: more than `u32::MAX - 1` locks are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimersFull;

/// Deadlines of all held locks, earliest first.
#[derive(Debug)]
pub(crate) struct Timers {
    heap: Vec<Slot>,
    nodes: Vec<Node>,
    free: u32,
    live: usize,
    /// When the sweeper will next look at the heap on its own (0 while it is sweeping, so
    /// nobody needs to wake it). A new deadline earlier than this must wake it.
    sweeper_wakes_at: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            heap: Vec::new(),
            nodes: Vec::new(),
            free: NONE,
            live: 0,
            sweeper_wakes_at: u64::MAX,
        }
    }
}

impl Timers {
    /// Allocates a node for `object` due at `deadline`. Returns its id and whether the sweeper
    /// must be woken to honour the new deadline.
    pub(crate) fn insert(
        &mut self,
        object: ObjectId,
        deadline: u64,
    ) -> Result<(TimerId, bool), TimersFull> {
        let id = if self.free != NONE {
            let id = self.free;
            let node = &mut self.nodes[id as usize];
            self.free = node.pos;
            node.object = Some(object);
            node.pos = FIRED;
            id
        } else {
            let id = u32::try_from(self.nodes.len())
                .ok()
                .filter(|&id| id != NONE)
                .ok_or(TimersFull)?;
            self.nodes.push(Node {
                object: Some(object),
                pos: FIRED,
            });
            id
        };
        self.live += 1;
        let wake = self.reschedule(id, deadline);
        Ok((id, wake))
    }

    /// Moves node `id` to `deadline`, putting it back in the heap if the sweeper had taken it
    /// out. Returns whether the sweeper must be woken.
    pub(crate) fn reschedule(&mut self, id: TimerId, deadline: u64) -> bool {
        let pos = self.nodes[id as usize].pos;
        if pos == FIRED {
            self.heap.push(Slot { deadline, id });
            self.sift_up(self.heap.len() - 1);
        } else {
            let pos = pos as usize;
            let earlier = deadline < self.heap[pos].deadline;
            self.heap[pos].deadline = deadline;
            if earlier {
                self.sift_up(pos);
            } else {
                self.sift_down(pos);
            }
        }
        if deadline < self.sweeper_wakes_at {
            self.sweeper_wakes_at = deadline;
            true
        } else {
            false
        }
    }

    /// Frees node `id`, removing its deadline from the heap if it is there.
    pub(crate) fn cancel(&mut self, id: TimerId) {
        let node = &mut self.nodes[id as usize];
        let pos = node.pos;
        node.object = None;
        node.pos = self.free;
        self.free = id;
        self.live -= 1;
        if pos != FIRED {
            self.remove_at(pos as usize);
        }
    }

    /// Takes up to `max` nodes due at or before `now` out of the heap into `out`, and marks the
    /// sweeper as awake (no wake-ups needed until [`Timers::sweeper_sleeps`]).
    pub(crate) fn pop_due(&mut self, now: u64, max: usize, out: &mut Vec<(TimerId, ObjectId)>) {
        self.sweeper_wakes_at = 0;
        while out.len() < max {
            match self.heap.first() {
                Some(slot) if slot.deadline <= now => {
                    let id = slot.id;
                    self.remove_at(0);
                    let node = &mut self.nodes[id as usize];
                    node.pos = FIRED;
                    if let Some(object) = &node.object {
                        out.push((id, object.clone()));
                    }
                }
                _ => break,
            }
        }
    }

    /// Records that the sweeper sleeps until the earliest deadline or `nap_until`, whichever
    /// comes first, and returns that time.
    pub(crate) fn sweeper_sleeps(&mut self, nap_until: u64) -> u64 {
        let until = self
            .heap
            .first()
            .map_or(nap_until, |slot| slot.deadline.min(nap_until));
        self.sweeper_wakes_at = until;
        until
    }

    /// Number of allocated nodes (one per held lock).
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Number of deadlines in the heap.
    #[cfg(test)]
    pub(crate) fn scheduled(&self) -> usize {
        self.heap.len()
    }

    fn remove_at(&mut self, pos: usize) {
        let Some(last) = self.heap.pop() else {
            return;
        };
        if pos < self.heap.len() {
            self.heap[pos] = last;
            self.set_pos(pos);
            if self.sift_up(pos) == pos {
                self.sift_down(pos);
            }
        }
    }

    fn set_pos(&mut self, pos: usize) {
        let id = self.heap[pos].id;
        // Heap positions fit in u32: the heap never holds more slots than there are nodes.
        self.nodes[id as usize].pos = pos as u32;
    }

    fn sift_up(&mut self, mut pos: usize) -> usize {
        let slot = self.heap[pos];
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.heap[parent].deadline <= slot.deadline {
                break;
            }
            self.heap[pos] = self.heap[parent];
            self.set_pos(pos);
            pos = parent;
        }
        self.heap[pos] = slot;
        self.set_pos(pos);
        pos
    }

    fn sift_down(&mut self, mut pos: usize) {
        let slot = self.heap[pos];
        let len = self.heap.len();
        loop {
            let left = 2 * pos + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && self.heap[right].deadline < self.heap[left].deadline {
                right
            } else {
                left
            };
            if self.heap[child].deadline >= slot.deadline {
                break;
            }
            self.heap[pos] = self.heap[child];
            self.set_pos(pos);
            pos = child;
        }
        self.heap[pos] = slot;
        self.set_pos(pos);
    }

    /// Checks every structural invariant (tests only).
    #[cfg(test)]
    pub(crate) fn assert_consistent(&self) {
        for (pos, slot) in self.heap.iter().enumerate() {
            assert_eq!(
                self.nodes[slot.id as usize].pos as usize, pos,
                "node knows its slot"
            );
            assert!(
                self.nodes[slot.id as usize].object.is_some(),
                "heap holds live nodes"
            );
            if pos > 0 {
                assert!(
                    self.heap[(pos - 1) / 2].deadline <= slot.deadline,
                    "heap order"
                );
            }
        }
        let mut free = 0;
        let mut next = self.free;
        while next != NONE {
            free += 1;
            assert!(
                self.nodes[next as usize].object.is_none(),
                "free nodes are empty"
            );
            next = self.nodes[next as usize].pos;
        }
        assert_eq!(
            free + self.live,
            self.nodes.len(),
            "every node is live or free"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn object(n: u32) -> ObjectId {
        ObjectId::new(format!("obj-{n}")).expect("valid")
    }

    fn drain_due(timers: &mut Timers, now: u64) -> Vec<String> {
        let mut out = Vec::new();
        timers.pop_due(now, usize::MAX, &mut out);
        out.into_iter().map(|(_, o)| o.to_string()).collect()
    }

    #[test]
    fn due_timers_come_out_earliest_first_and_later_ones_stay() {
        let mut timers = Timers::default();
        for (n, deadline) in [(1, 30), (2, 10), (3, 20), (4, 99)] {
            timers.insert(object(n), deadline).expect("room");
        }
        assert_eq!(drain_due(&mut timers, 30), ["obj-2", "obj-3", "obj-1"]);
        assert_eq!(timers.scheduled(), 1);
        // Fired nodes stay allocated until their owner cancels or re-arms them.
        assert_eq!(timers.live(), 4);
        timers.assert_consistent();
    }

    #[test]
    fn a_cancelled_timer_never_fires_and_its_node_is_reused() {
        let mut timers = Timers::default();
        let (a, _) = timers.insert(object(1), 10).expect("room");
        timers.insert(object(2), 20).expect("room");
        timers.cancel(a);
        assert_eq!(timers.live(), 1);
        let (reused, _) = timers.insert(object(3), 30).expect("room");
        assert_eq!(
            reused, a,
            "freed nodes are recycled, the slab does not grow"
        );
        assert_eq!(drain_due(&mut timers, 100), ["obj-2", "obj-3"]);
        timers.assert_consistent();
    }

    #[test]
    fn a_fired_timer_can_be_rearmed_or_cancelled() {
        let mut timers = Timers::default();
        let (a, _) = timers.insert(object(1), 10).expect("room");
        let (b, _) = timers.insert(object(2), 10).expect("room");
        assert_eq!(drain_due(&mut timers, 10).len(), 2);
        timers.reschedule(a, 50);
        timers.cancel(b);
        timers.assert_consistent();
        assert!(drain_due(&mut timers, 49).is_empty());
        assert_eq!(drain_due(&mut timers, 50), ["obj-1"]);
    }

    #[test]
    fn the_sweeper_is_woken_only_for_deadlines_before_its_own_wake_up() {
        let mut timers = Timers::default();
        assert_eq!(timers.sweeper_sleeps(1_000), 1_000);
        let (_, wake) = timers.insert(object(1), 5_000).expect("room");
        assert!(!wake, "the sweeper looks again at 1000 anyway");
        let (b, wake) = timers.insert(object(2), 500).expect("room");
        assert!(wake, "500 is before the sweeper's wake-up");
        assert!(!timers.reschedule(b, 700), "already woken for 500");
        let mut out = Vec::new();
        timers.pop_due(0, 10, &mut out);
        let (_, wake) = timers.insert(object(3), 1).expect("room");
        assert!(!wake, "a sweeping sweeper looks again before it sleeps");
        assert_eq!(timers.sweeper_sleeps(u64::MAX), 1);
    }

    /// Random inserts, reschedules, cancels and pops, checked against a simple model.
    #[test]
    fn random_operations_match_a_sorted_model() {
        let mut timers = Timers::default();
        // model: id -> (deadline, in heap?)
        let mut model: BTreeMap<TimerId, (u64, bool)> = BTreeMap::new();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let mut now = 0;
        for step in 0..20_000u32 {
            match next(6) {
                0 | 1 => {
                    let deadline = now + next(1_000);
                    let (id, _) = timers.insert(object(step), deadline).expect("room");
                    model.insert(id, (deadline, true));
                }
                2 if !model.is_empty() => {
                    let id = *model
                        .keys()
                        .nth(next(model.len() as u64) as usize)
                        .expect("id");
                    let deadline = now + next(1_000);
                    timers.reschedule(id, deadline);
                    model.insert(id, (deadline, true));
                }
                3 if !model.is_empty() => {
                    let id = *model
                        .keys()
                        .nth(next(model.len() as u64) as usize)
                        .expect("id");
                    timers.cancel(id);
                    model.remove(&id);
                }
                _ => {
                    now += next(50);
                    let mut out = Vec::new();
                    timers.pop_due(now, usize::MAX, &mut out);
                    let mut expected: Vec<TimerId> = model
                        .iter()
                        .filter(|(_, &(d, armed))| armed && d <= now)
                        .map(|(&id, _)| id)
                        .collect();
                    let mut got: Vec<TimerId> = out.iter().map(|&(id, _)| id).collect();
                    expected.sort_unstable();
                    got.sort_unstable();
                    assert_eq!(got, expected, "step {step}");
                    for id in got {
                        if let Some(entry) = model.get_mut(&id) {
                            entry.1 = false;
                        }
                    }
                }
            }
            if step % 1_000 == 0 {
                timers.assert_consistent();
            }
        }
        timers.assert_consistent();
        assert_eq!(timers.live(), model.len());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One step against the heap; ids are picked among the live nodes by index.
        #[derive(Debug, Clone)]
        enum Step {
            Insert {
                deadline: u64,
            },
            Reschedule {
                pick: prop::sample::Index,
                deadline: u64,
            },
            Cancel {
                pick: prop::sample::Index,
            },
            Pop {
                advance: u64,
                max: usize,
            },
            Sleep {
                nap: u64,
            },
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                3 => (0u64..500).prop_map(|deadline| Step::Insert { deadline }),
                2 => (any::<prop::sample::Index>(), 0u64..500)
                    .prop_map(|(pick, deadline)| Step::Reschedule { pick, deadline }),
                2 => any::<prop::sample::Index>().prop_map(|pick| Step::Cancel { pick }),
                2 => (0u64..60, 1usize..8).prop_map(|(advance, max)| Step::Pop { advance, max }),
                1 => (0u64..300).prop_map(|nap| Step::Sleep { nap }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Under any sequence of inserts, reschedules, cancels, pops and sweeper naps, the heap
            /// stays consistent, pops the earliest due deadlines first (at most `max`, never one
            /// not yet due), and asks to wake the sweeper exactly for deadlines before its wake-up.
            #[test]
            fn random_steps_keep_the_heap_consistent_and_ordered(
                steps in proptest::collection::vec(step(), 1..120),
            ) {
                let mut timers = Timers::default();
                // Model: live id -> (deadline, armed).
                let mut model: BTreeMap<TimerId, (u64, bool)> = BTreeMap::new();
                let mut wakes_at = u64::MAX;
                let mut now = 0u64;
                for (n, step) in steps.into_iter().enumerate() {
                    match step {
                        Step::Insert { deadline } => {
                            let deadline = now + deadline;
                            let (id, wake) = timers
                                .insert(object(n as u32), deadline)
                                .expect("room");
                            prop_assert!(!model.contains_key(&id), "id {id} handed out twice");
                            prop_assert_eq!(wake, deadline < wakes_at);
                            wakes_at = wakes_at.min(deadline);
                            model.insert(id, (deadline, true));
                        }
                        Step::Reschedule { pick, deadline } if !model.is_empty() => {
                            let id = *model.keys().nth(pick.index(model.len())).expect("id");
                            let deadline = now + deadline;
                            let wake = timers.reschedule(id, deadline);
                            prop_assert_eq!(wake, deadline < wakes_at);
                            wakes_at = wakes_at.min(deadline);
                            model.insert(id, (deadline, true));
                        }
                        Step::Cancel { pick } if !model.is_empty() => {
                            let id = *model.keys().nth(pick.index(model.len())).expect("id");
                            timers.cancel(id);
                            model.remove(&id);
                        }
                        Step::Pop { advance, max } => {
                            now += advance;
                            let mut out = Vec::new();
                            timers.pop_due(now, max, &mut out);
                            wakes_at = 0;
                            let mut due: Vec<(u64, TimerId)> = model
                                .iter()
                                .filter(|(_, &(d, armed))| armed && d <= now)
                                .map(|(&id, &(d, _))| (d, id))
                                .collect();
                            due.sort_unstable();
                            prop_assert_eq!(out.len(), due.len().min(max));
                            let popped: Vec<u64> = out.iter().map(|&(id, _)| model[&id].0).collect();
                            prop_assert!(popped.windows(2).all(|w| w[0] <= w[1]), "{popped:?}");
                            let earliest: Vec<u64> = due.iter().take(max).map(|&(d, _)| d).collect();
                            prop_assert_eq!(&popped, &earliest);
                            for (id, popped_object) in out {
                                let entry = model.get_mut(&id).expect("popped a live node");
                                prop_assert!(entry.1, "popped a node twice");
                                entry.1 = false;
                                prop_assert!(popped_object.as_str().starts_with("obj-"));
                            }
                        }
                        Step::Sleep { nap } => {
                            let until = timers.sweeper_sleeps(now + nap);
                            let earliest = model
                                .values()
                                .filter(|(_, armed)| *armed)
                                .map(|(d, _)| *d)
                                .min();
                            prop_assert_eq!(until, earliest.map_or(now + nap, |d| d.min(now + nap)));
                            wakes_at = until;
                        }
                        _ => {}
                    }
                    timers.assert_consistent();
                    prop_assert_eq!(timers.live(), model.len());
                    prop_assert_eq!(
                        timers.scheduled(),
                        model.values().filter(|(_, armed)| *armed).count()
                    );
                }
            }
        }
    }
}
