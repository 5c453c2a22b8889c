#![doc = include_str!("../README.md")]

mod body;
mod envelope;
mod event;
mod time;

pub use body::{
    AcquireRequest, EventParams, EventsBody, InspectRequest, LeaseBody, ListBody, ListParams,
    LockBody, ReleaseBody, RenewRequest, TokenRequest,
};
pub use envelope::{argument_field, ErrorBody, ErrorEnvelope, ARGUMENT_FIELDS};
pub use event::{Event, EventKind};
pub use time::rfc3339;
