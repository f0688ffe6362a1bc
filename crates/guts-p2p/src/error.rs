//! The one error type of this crate.

/// What can go wrong in the peer-to-peer layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The network task has stopped.
    #[error("the p2p network is not running")]
    Stopped,
    /// Setting up transports or listening failed.
    #[error("p2p transport: {0}")]
    Transport(String),
    /// Opening or using a stream failed.
    #[error("p2p stream: {0}")]
    Stream(String),
    /// A peer sent something malformed or over a limit.
    #[error("peer misbehaved: {0}")]
    Peer(String),
    /// The local replica refused or failed.
    #[error("replica: {0}")]
    Replica(String),
    /// I/O on a stream.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;
