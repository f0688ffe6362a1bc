//! Applying one update from a peer: plan it (verified by the replica),
//! fetch its missing objects in one v2 fetch (resuming a transfer that
//! broke off), apply it.

use std::sync::Arc;

use guts_git::names::RepoName;
use guts_git::ObjectId;
use guts_identity::SignedRefUpdate;
use libp2p::PeerId;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::io::SyncIoBridge;

use super::{blocking, needs_identity, Fault, Plan, Replica, Replicator};
use crate::error::{Error, Result};
use crate::limits::{FETCH_ATTEMPTS, FETCH_RETRY_DELAY};
use crate::wire::{write_frame, Kind, Request, REPLICATION_PROTOCOL};

/// How one transfer attempt failed: broken off (worth resuming) or not.
enum Attempt {
    Interrupted(Error),
    Failed(Error),
}

impl<R: Replica> Replicator<R> {
    /// Check, fetch what is missing from `peer`, and apply one update.
    pub(super) async fn apply_from(
        &self,
        peer: PeerId,
        repo: &RepoName,
        update: SignedRefUpdate,
    ) -> Result<bool> {
        let lock = self.repo_lock(repo);
        let _applying = lock.lock().await;
        let (missing, checked) = match self.plan_from(peer, repo, update).await? {
            Plan::Known => return Ok(false),
            Plan::NeedIdentity => return Err(needs_identity()),
            Plan::Apply { missing, checked } => (missing, checked),
        };
        if !missing.is_empty() {
            self.fetch_tips(peer, repo, &missing).await?;
        }
        self.apply(checked).await
    }

    /// Plan an update; if it needs a newer identity document, take the
    /// peer's document chain (verified) and plan again.
    pub(super) async fn plan_from(
        &self,
        peer: PeerId,
        repo: &RepoName,
        update: SignedRefUpdate,
    ) -> Result<Plan<R::Checked>> {
        let plan = self.plan(repo, update.clone()).await?;
        if !matches!(plan, Plan::NeedIdentity) {
            return Ok(plan);
        }
        self.take_identity(peer, repo).await?;
        self.plan(repo, update).await
    }

    async fn plan(&self, repo: &RepoName, update: SignedRefUpdate) -> Result<Plan<R::Checked>> {
        let replica = Arc::clone(&self.replica);
        let r = repo.clone();
        blocking(move || replica.plan(&r, update))
            .await?
            .map_err(Error::from)
    }

    /// Apply a planned update whose objects are present.
    pub(super) async fn apply(&self, checked: R::Checked) -> Result<bool> {
        let replica = Arc::clone(&self.replica);
        blocking(move || replica.apply(checked))
            .await?
            .map_err(Error::from)
    }

    /// Fetch the objects of `tips` from `peer` in one v2 fetch (wants: the
    /// tips, haves: the local refs). If the transfer breaks off, the bytes
    /// that arrived are kept and the next attempt (up to [`FETCH_ATTEMPTS`],
    /// and any later one for the same request) resumes after them.
    pub(super) async fn fetch_tips(
        &self,
        peer: PeerId,
        repo: &RepoName,
        tips: &[ObjectId],
    ) -> Result<()> {
        let replica = Arc::clone(&self.replica);
        let (r, wants) = (repo.clone(), tips.to_vec());
        let body = blocking(move || replica.fetch_request(&r, &wants))
            .await?
            .map_err(Error::from)?;
        let mut attempt = 1;
        loop {
            match self.fetch_once(peer, repo, tips, &body).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Interrupted(e)) if attempt < FETCH_ATTEMPTS => {
                    tracing::warn!(%peer, %repo, attempt, error = %e, "object transfer broke off; resuming");
                    tokio::time::sleep(FETCH_RETRY_DELAY * attempt).await;
                    attempt += 1;
                }
                Err(Attempt::Interrupted(e)) | Err(Attempt::Failed(e)) => return Err(e),
            }
        }
    }

    /// One attempt at a transfer: ask (resuming after the bytes held, if
    /// any) and receive the answer through the replica.
    async fn fetch_once(
        &self,
        peer: PeerId,
        repo: &RepoName,
        tips: &[ObjectId],
        body: &[u8],
    ) -> std::result::Result<(), Attempt> {
        let replica = Arc::clone(&self.replica);
        let (r, b) = (repo.clone(), body.to_vec());
        let resume = blocking(move || replica.resume_point(&r, &b))
            .await
            .map_err(Attempt::Failed)?;
        let (resume_offset, resume_sha1) =
            resume.map_or((0, Vec::new()), |p| (p.offset, p.sha1.to_vec()));
        if resume_offset > 0 {
            tracing::info!(%peer, %repo, bytes = resume_offset, "resuming an interrupted transfer");
        }
        // A stream that cannot be opened or written is a broken transfer too.
        let mut stream = self
            .net
            .open_stream(peer, REPLICATION_PROTOCOL)
            .await
            .map_err(Attempt::Interrupted)?;
        let req = Request {
            kind: Kind::Fetch as i32,
            repo: repo.to_string(),
            body: body.to_vec(),
            resume_offset,
            resume_sha1,
            start: 0,
        };
        write_frame(&mut stream, &req)
            .await
            .map_err(Attempt::Interrupted)?;
        let reader = SyncIoBridge::new(stream.compat());
        let replica = Arc::clone(&self.replica);
        let (r, tips, b) = (repo.clone(), tips.to_vec(), body.to_vec());
        let received = blocking(move || {
            let mut reader = std::io::BufReader::with_capacity(64 * 1024, reader);
            replica.receive(&r, &tips, &b, resume_offset, &mut reader)
        })
        .await
        .map_err(Attempt::Failed)?;
        match received {
            Ok(()) => Ok(()),
            Err(f @ Fault::Interrupted(_)) => Err(Attempt::Interrupted(f.into())),
            Err(f) => Err(Attempt::Failed(f.into())),
        }
    }
}
