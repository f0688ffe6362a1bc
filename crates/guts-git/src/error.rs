//! The one error type of this crate.

use std::path::PathBuf;

use gix_hash::ObjectId;

/// Everything that can go wrong in `guts-git`.
///
/// The node maps each variant to an HTTP status or a git `ERR` packet in one
/// place (`guts-node`'s `error` module); the messages are written to be shown
/// to a git user as they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer broke the wire protocol (bad pkt-line, unexpected packet, bad argument).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A request exceeded one of the protocol limits in [`crate::limits`].
    #[error("request too large: {0}")]
    TooLarge(String),
    /// A pushed or fetched pack would take more work than this node allows
    /// (see [`crate::pack_in::PackLimits`]): it is refused before that work is done.
    #[error("pack refused: {what}, over this node's limit of {limit}")]
    Limit {
        /// What was too big, with the amount found.
        what: String,
        /// The limit it broke.
        limit: u64,
    },
    /// Reading or writing a stream or file failed.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// A repository name does not follow the `OWNER/NAME` rules.
    #[error("invalid repository name {name:?}: {reason}")]
    InvalidRepoName {
        /// The offending name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A ref name fails `git check-ref-format`.
    #[error("invalid ref name {0:?}")]
    InvalidRefName(String),
    /// No repository with this name.
    #[error("repository {0} does not exist")]
    RepoNotFound(String),
    /// The repository already exists.
    #[error("repository {0} already exists")]
    RepoExists(String),
    /// An object the operation needs is not in the store.
    #[error("object {0} is missing")]
    MissingObject(ObjectId),
    /// An object could not be parsed.
    #[error("object {id} is corrupt: {reason}")]
    CorruptObject {
        /// The object.
        id: ObjectId,
        /// What is wrong with it.
        reason: String,
    },
    /// A client asked for an object that no ref advertises.
    #[error("not our ref {0}")]
    NotOurRef(ObjectId),
    /// Reading, indexing or generating a pack failed.
    #[error("pack error: {0}")]
    Pack(String),
    /// The metadata database failed.
    #[error("metadata store error: {0}")]
    Metadata(String),
    /// A commit-graph file (`objects/info/commit-graph`) is damaged or of a
    /// kind this node does not read, or the commits given to write one are
    /// inconsistent (a parent missing from the set); see [`crate::commit_graph`].
    #[error("commit-graph {}: {reason}", path.display())]
    CommitGraph {
        /// The file read or written.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The pushed objects do not reach everything the new ref values need.
    #[error("pack error: the pushed objects are not connected: {missing} object(s) missing, e.g. {example}")]
    NotConnected {
        /// How many objects are missing.
        missing: usize,
        /// One of them.
        example: ObjectId,
    },
    /// A ref change was refused as a whole by what must be recorded with it
    /// (the node's signed-update log), e.g. an update already recorded.
    #[error("{0}")]
    Rejected(String),
    /// This node's disk is full (ENOSPC while writing).
    #[error("the node's disk is full (no space left on device); nothing was stored")]
    DiskFull,
    /// The node is at its limit for this kind of work (e.g. every pack
    /// generation slot stayed busy); the client may retry later.
    #[error("server busy: {0}")]
    Busy(String),
    /// A `git archive` request refused the way git refuses it (unknown
    /// option, no such ref, path not found...): the text is what git's
    /// archiver prints on its standard error, shown to the user as is.
    #[error("{0}")]
    Archive(String),
    /// An operation the protocol allows but this node does not implement.
    #[error("not supported by this server: {0}")]
    Unsupported(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Metadata(e.to_string())
    }
}

impl Error {
    /// Wrap an error from gitoxide with a short context; a full disk
    /// anywhere in its causes is reported as [`Error::DiskFull`], not as a
    /// bad pack.
    pub(crate) fn pack(context: &str, err: impl std::error::Error + 'static) -> Self {
        if is_disk_full(&err) {
            return Error::DiskFull;
        }
        Error::Pack(format!("{context}: {err}"))
    }
}

/// Whether `err` or one of its causes is ENOSPC.
pub fn is_disk_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28) {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if is_disk_full(&e) {
            Error::DiskFull
        } else {
            Error::Io(e)
        }
    }
}
