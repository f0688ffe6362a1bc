//! What the domain layer publishes about repositories ([`RepoEvent`]).

use guts_git::names::RepoName;
use guts_git::ObjectId;
use guts_identity::doc::RepoId;
use guts_identity::SignedRefUpdate;

/// Something that happened to a repository.
#[derive(Debug, Clone)]
pub enum RepoEvent {
    /// A push to this node was accepted and logged.
    Pushed {
        /// The repository.
        repo: RepoName,
        /// Its id.
        id: RepoId,
        /// The logged update.
        update: SignedRefUpdate,
        /// Its position in the log.
        seq: u64,
    },
    /// A new identity document version was accepted (not one taken from a
    /// peer): peers should take it at once (a revoked grant, a removed
    /// delegate).
    IdentityChanged {
        /// The repository.
        repo: RepoName,
        /// Its id.
        id: RepoId,
        /// How many versions the node now holds.
        versions: u64,
    },
    /// Refs moved, by a push or a replicated update.
    RefsMoved {
        /// The repository.
        repo: RepoName,
        /// Each ref with its old and new value (`None`: absent).
        moves: Vec<(String, Option<ObjectId>, Option<ObjectId>)>,
        /// Whether a peer's update caused it.
        replicated: bool,
        /// The position of the update that moved them in this node's log.
        seq: u64,
        /// Its certificate's signer (`did:key:...`).
        signer: Option<String>,
        /// The pushee URL its certificate names: the node that accepted it.
        pushee: Option<String>,
        /// When they moved, seconds since the epoch.
        at: u64,
    },
}
