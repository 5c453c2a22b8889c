//! Fence numbers: strictly increasing per object, even across restarts and data loss.
//!
//! # The scheme
//!
//! A fence is a `u64`. Each grant takes
//!
//! ```text
//! fence = max(last + 1, clock_floor(now))    where clock_floor(t) = unix_micros(t) << 10
//! ```
//!
//! `last` is the highest fence the backend remembers for the object (or for all objects). The
//! clock floor makes fences survive the loss of `last`: after a restart or a wiped backend, the
//! next fence is above every fence issued before, as long as
//!
//! 1. the clock that feeds the floor (the process's wall clock for memory, Redis's `TIME`,
//!    Postgres's `clock_timestamp()`) did not step back by more than it had advanced, and
//! 2. no object got more than 1024 grants per microsecond on average (fences run ahead of the
//!    floor only by the grants squeezed into one microsecond; one lock round trip takes far longer).
//!
//! `unix_micros << 10` stays below `u64::MAX` until the year 2540.

use std::time::{SystemTime, UNIX_EPOCH};

/// Bits the microsecond clock is shifted by: room for 1024 grants per microsecond.
pub const FENCE_CLOCK_SHIFT: u32 = 10;

/// A fence number: strictly increasing per object across every grant.
///
/// Storage that receives writes carrying a fence refuses any fence lower than the highest it has
/// seen for that object, so a holder whose lease expired cannot overwrite a newer holder's work.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Fence(pub u64);

impl Fence {
    /// The fence value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The floor derived from a unix time in microseconds.
    pub fn clock_floor(unix_micros: u64) -> Fence {
        Fence(unix_micros.saturating_mul(1 << FENCE_CLOCK_SHIFT))
    }

    /// The next fence after `last` (if any) at `unix_micros`: `max(last + 1, floor)`.
    pub fn next_after(last: Option<Fence>, unix_micros: u64) -> Fence {
        let floor = Fence::clock_floor(unix_micros);
        match last {
            Some(Fence(last)) => Fence(last.saturating_add(1).max(floor.0)),
            None => floor,
        }
    }
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Microseconds since the Unix epoch on this process's wall clock (0 if the clock is before 1970).
pub fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fence_is_above_last_and_floor() {
        assert_eq!(Fence::next_after(None, 5), Fence(5 << 10));
        assert_eq!(Fence::next_after(Some(Fence(1)), 5), Fence(5 << 10));
        assert_eq!(
            Fence::next_after(Some(Fence(10 << 10)), 5),
            Fence((10 << 10) + 1)
        );
    }

    #[test]
    fn floor_after_a_restart_is_above_fences_from_before() {
        let before = Fence::next_after(None, wall_clock_micros());
        let before = Fence::next_after(Some(before), wall_clock_micros());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after_restart = Fence::next_after(None, wall_clock_micros());
        assert!(after_restart > before);
    }
}
