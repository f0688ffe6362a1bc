//! `guts-p2p`: how Guts nodes find each other and replicate repositories.
//!
//! - [`network`]: the libp2p swarm (TCP/QUIC, noise, yamux, identify, ping,
//!   Kademlia, mDNS, gossipsub, streams) behind a [`network::Handle`];
//! - [`wire`]: the messages peers exchange (prost), framed with limits;
//! - [`service`]: the replication protocol's decisions as a state machine
//!   without I/O (events in, [`service::Io`] out);
//! - [`replication`]: the [`replication::Replica`] the node implements, and
//!   the tokio driver that carries out the service's I/O and serves peers;
//! - [`logset`]: comparing logs by key ranges;
//! - [`conflict`]: the deterministic rule that settles concurrent updates;
//! - [`metrics`]: the p2p layer's Prometheus metrics.
//!
//! This crate never trusts a peer: everything received is checked by the
//! replica (signatures, delegates, object hashes, connectivity) before it is
//! stored. It does not speak HTTP and holds no storage of its own.
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod conflict;
pub mod error;
pub mod limits;
pub mod logset;
pub mod metrics;
pub mod network;
pub mod replication;
pub mod service;
pub mod wire;

pub use error::{Error, Result};
/// Multiaddr parts ([`multiaddr::Protocol`]), to build and inspect addresses.
pub use libp2p::multiaddr;
pub use libp2p::{identity::Keypair as NodeKeypair, Multiaddr, PeerId};
