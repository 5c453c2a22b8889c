#![doc = include_str!("../README.md")]

mod body;
mod envelope;
mod event;
mod filter;
mod time;

pub use body::{
    AcquireRequest, DelayBody, EntryResult, EventParams, EventsBody, FailedEntry, GrantBody,
    GrantedLock, HolderBody, InspectRequest, LeaseBody, ListBody, ListParams, LockBody, Named,
    ObjectSpec, ReleaseBody, ReleaseRequest, RenewRequest, ResultsBody, TokenRequest,
};
pub use envelope::{argument_field, ConflictBody, ErrorBody, ErrorEnvelope, ARGUMENT_FIELDS};
pub use event::{Event, EventKind};
pub use filter::{EventFilter, MAX_FILTER_VALUES};
pub use time::rfc3339;
