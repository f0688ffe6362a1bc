//! `guts-git`: the git half of a Guts node.
//!
//! Everything a node needs to speak git's smart protocol and keep
//! repositories: pkt-line framing ([`pktline`]), ref advertisements
//! ([`protocol`]), the server side of fetch ([`upload_pack`], v0/v1/v2) and
//! push ([`receive_pack`]), history walks ([`walk`]), git's commit-graph
//! file ([`commit_graph`]), pack generation that reuses stored deltas
//! ([`pack_out`]), a disk cache of generated packs ([`pack_cache`]),
//! quarantined pack reception ([`pack_in`]) and storage of packs and refs,
//! with their maintenance ([`storage`]), and `git archive --remote`
//! ([`archive`]); read helpers for the node's web view ([`browse`]).
//!
//! What this crate must not do: open sockets, spawn an async runtime, or know
//! about HTTP. Its protocol functions take a [`std::io::BufRead`] for the
//! request body and a [`std::io::Write`] for the response body, so tests drive
//! them with byte slices and the node drives them from a blocking task.
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod archive;
pub mod browse;
pub mod commit_graph;
pub mod error;
pub mod fetch;
pub mod filter;
pub mod lfs;
pub mod limits;
pub mod names;
pub mod odb;
pub mod pack_cache;
pub mod pack_in;
pub mod pack_out;
pub mod pack_rewrite;
pub mod pktline;
pub mod progress;
pub mod protocol;
pub mod receive_pack;
pub mod resume;
pub mod shallow;
pub mod storage;
pub mod upload_pack;
pub mod walk;

pub use error::{Error, Result};
pub use gix_hash::ObjectId;
