//! Configuration of the in-memory backend.

use lockcore::{Fence, Limits};

/// How a [`MemoryLockService`](crate::MemoryLockService) is set up.
///
/// Deserializes from partial input: missing fields take their defaults.
///
/// ```
/// use backend_memory::MemoryConfig;
/// use lockcore::Fence;
/// let config: MemoryConfig = serde_json::from_str(r#"{"fence_floor": 42}"#).unwrap();
/// assert_eq!(config.fence_floor, Fence(42));
/// assert_eq!(config.limits, lockcore::Limits::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Longest TTL and wait accepted (defaults: 24 h and 5 min).
    pub limits: Limits,
    /// Every fence this service issues is above this one (default `Fence(0)`). A server that
    /// persists [`MemoryLockService::highest_fence`](crate::MemoryLockService::highest_fence)
    /// passes it back here after a restart, so fences keep increasing even if the wall clock
    /// stepped back in between.
    pub fence_floor: Fence,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            fence_floor: Fence(0),
        }
    }
}

impl MemoryConfig {
    /// A configuration with the given limits and no fence floor.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            fence_floor: Fence(0),
        }
    }

    /// The same configuration with fences issued only above `floor`.
    pub fn with_fence_floor(mut self, floor: Fence) -> Self {
        self.fence_floor = floor;
        self
    }
}
