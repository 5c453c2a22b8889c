//! Per-check object names, so checks never see each other's locks.

use lockcore::{ObjectId, OwnerId};
use rand::Rng;

/// A random namespace for one check: all its objects start with `ct/<random>/`.
#[derive(Debug, Clone)]
pub struct Scope {
    prefix: String,
}

impl Scope {
    /// A fresh random scope, named after the check for readable failures.
    pub fn new(check: &str) -> Self {
        let tag: u64 = rand::rng().random();
        Self {
            prefix: format!("ct/{check}/{tag:016x}/"),
        }
    }

    /// The prefix every object of this scope starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The object `name` inside this scope.
    pub fn object(&self, name: &str) -> ObjectId {
        ObjectId::new(format!("{}{name}", self.prefix)).expect("scoped object ids are valid")
    }

    /// An owner id (owners need no scoping; they are plain names).
    pub fn owner(&self, name: &str) -> OwnerId {
        OwnerId::new(name).expect("owner ids in checks are valid")
    }
}
