//! A Git LFS server on the node (ADR 0022): the batch API with the basic
//! transfer adapter, object storage per repository ([`store`]) and the
//! file-locking API ([`locks`]).
//!
//! git-lfs finds it with no configuration: from a clone URL
//! `http://HOST/OWNER/NAME` (with or without `.git`) it derives
//! `http://HOST/OWNER/NAME.git/info/lfs`, and the node's routes accept the
//! repository name with or without `.git`.
//!
//! Downloads are public like clones. Uploads and locks need a push token
//! (ADR 0012; git-lfs sends it as the Basic password git's credential
//! helper gives) or the operator token.

mod api;
mod batch;
pub mod locks;
mod locks_api;
pub mod store;
mod transfer;

use std::path::Path;

use axum::routing::{get, post};
use axum::Router;

pub use store::{ImportOutcome, LfsOid, LfsSize, LfsStore};

use crate::error::NodeError;
use crate::http::Shared;

/// The LFS state of a node: objects and locks.
pub struct Lfs {
    /// Objects, per repository.
    pub store: LfsStore,
    /// Locks, per repository (sled).
    pub locks: locks::LockStore,
    /// Largest object accepted (the node's `max_pack_bytes`).
    pub max_object_bytes: u64,
}

impl Lfs {
    /// Open the objects under `data_dir` and the locks in `db`.
    pub fn open(data_dir: &Path, db: &sled::Db, max_object_bytes: u64) -> Result<Self, NodeError> {
        Ok(Lfs {
            store: LfsStore::open(data_dir)?,
            locks: locks::LockStore::open(db)?,
            max_object_bytes,
        })
    }
}

/// The LFS routes, under `/{owner}/{name}/info/lfs/`.
pub fn routes() -> Router<Shared> {
    const BASE: &str = "/{owner}/{name}/info/lfs";
    Router::new()
        .route(&format!("{BASE}/objects/batch"), post(batch::batch))
        .route(
            &format!("{BASE}/objects/{{oid}}"),
            get(transfer::download).put(transfer::upload),
        )
        .route(&format!("{BASE}/verify"), post(transfer::verify))
        .route(
            &format!("{BASE}/locks"),
            get(locks_api::list).post(locks_api::create),
        )
        .route(&format!("{BASE}/locks/verify"), post(locks_api::verify))
        .route(
            &format!("{BASE}/locks/{{id}}/unlock"),
            post(locks_api::unlock),
        )
}
