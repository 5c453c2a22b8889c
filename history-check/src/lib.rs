#![doc = include_str!("../README.md")]

mod checker;
mod history;
mod recorder;
mod storage;

pub use checker::{check, CheckConfig, Report, Violation};
pub use history::{Fault, Grant, History, LeaseId, OpKind, Operation, Outcome};
pub use recorder::{Invocation, Recorder};
pub use storage::{StaleFence, StorageNode};
