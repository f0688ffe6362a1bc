//! A Git LFS server on the node (ADR 0022): object storage per repository
//! ([`store`]).

// Wired into the HTTP server in the next step.
#![allow(dead_code, unused_imports)]
pub mod store;

pub use store::{ImportOutcome, LfsOid, LfsSize, LfsStore};
