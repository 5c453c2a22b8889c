//! Range checks for TTLs and waits, configured once and applied by every backend.

use std::time::Duration;

use crate::error::LockError;

/// The shortest lease a backend grants.
pub const MIN_TTL: Duration = Duration::from_millis(1);

/// Upper bounds on what a caller may ask for.
///
/// Every backend holds one and calls [`Limits::check_acquire`] / [`Limits::check_ttl`] before it
/// touches state, so the same request is refused the same way on every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Limits {
    /// Longest lease granted (default 24 h).
    #[serde(with = "crate::serde_millis")]
    pub max_ttl: Duration,
    /// Longest a blocking acquire may wait (default 5 min).
    #[serde(with = "crate::serde_millis")]
    pub max_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(24 * 60 * 60),
            max_wait: Duration::from_secs(5 * 60),
        }
    }
}

impl Limits {
    /// Limits with the given maxima.
    pub fn new(max_ttl: Duration, max_wait: Duration) -> Self {
        Self { max_ttl, max_wait }
    }

    /// Refuses a TTL outside `[1 ms, max_ttl]` (sub-millisecond parts are not allowed either,
    /// since backends keep millisecond precision).
    pub fn check_ttl(&self, ttl: Duration) -> Result<(), LockError> {
        if ttl < MIN_TTL {
            return Err(LockError::invalid_argument("ttl", "must be at least 1 ms"));
        }
        if ttl > self.max_ttl {
            return Err(LockError::invalid_argument(
                "ttl",
                format!("must be at most {} ms", self.max_ttl.as_millis()),
            ));
        }
        if !ttl.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(LockError::invalid_argument(
                "ttl",
                "must be a whole number of milliseconds",
            ));
        }
        Ok(())
    }

    /// Refuses a wait above `max_wait`.
    pub fn check_wait(&self, wait: Duration) -> Result<(), LockError> {
        if wait > self.max_wait {
            return Err(LockError::invalid_argument(
                "wait",
                format!("must be at most {} ms", self.max_wait.as_millis()),
            ));
        }
        Ok(())
    }

    /// Checks both arguments of an acquire.
    pub fn check_acquire(&self, ttl: Duration, wait: Duration) -> Result<(), LockError> {
        self.check_ttl(ttl)?;
        self.check_wait(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_must_lie_between_one_millisecond_and_the_maximum() {
        let limits = Limits::new(Duration::from_secs(10), Duration::from_secs(1));
        assert!(limits.check_ttl(Duration::from_millis(1)).is_ok());
        assert!(limits.check_ttl(Duration::from_secs(10)).is_ok());
        assert!(limits.check_ttl(Duration::ZERO).is_err());
        assert!(limits.check_ttl(Duration::from_micros(1500)).is_err());
        assert!(limits.check_ttl(Duration::from_millis(10_001)).is_err());
    }

    #[test]
    fn wait_must_not_exceed_the_maximum() {
        let limits = Limits::new(Duration::from_secs(10), Duration::from_secs(1));
        assert!(limits.check_wait(Duration::ZERO).is_ok());
        assert!(limits.check_wait(Duration::from_secs(1)).is_ok());
        assert!(limits.check_wait(Duration::from_millis(1001)).is_err());
    }
}
