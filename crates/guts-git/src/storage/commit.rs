//! Ref changes, committed in one sled transaction together with what the
//! caller must record beside them (a [`Journal`]: the node's signed-update
//! log). Either the refs moved and the record is stored, or neither: a crash
//! at any instant cannot leave a ref moved without its record.

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::{oid_from, RefRejection, RefUpdate, Repo, RepoSettings};
use crate::error::{Error, Result};

/// What a ref change records in the same transaction.
///
/// `record` may run more than once: sled re-runs a transaction whose reads
/// were invalidated by a concurrent one, so it must derive what it writes
/// from the transaction's view and its own fields only.
pub trait Journal {
    /// The trees `record` writes to, of the storage's database
    /// ([`super::Storage::db`]).
    fn trees(&self) -> Vec<sled::Tree>;
    /// Write the record into `trees` (in the order [`Journal::trees`] gave
    /// them). `applied[i]` tells whether the `i`-th ref update is applied.
    /// `Err(ConflictableTransactionError::Abort(reason))` cancels the whole
    /// commit: no ref moves, and the caller gets [`Error::Rejected`].
    fn record(
        &self,
        trees: &[TransactionalTree],
        applied: &[bool],
    ) -> std::result::Result<(), ConflictableTransactionError<String>>;
}

/// A commit that records nothing beside the refs (tests, tools).
pub struct NoJournal;

impl Journal for NoJournal {
    fn trees(&self) -> Vec<sled::Tree> {
        Vec::new()
    }

    fn record(
        &self,
        _: &[TransactionalTree],
        _: &[bool],
    ) -> std::result::Result<(), ConflictableTransactionError<String>> {
        Ok(())
    }
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<String>>;

impl Repo {
    /// Apply `updates`, each a compare-and-swap on its old value, recording
    /// nothing else. See [`Repo::commit_refs`].
    pub fn update_refs(
        &self,
        updates: &[RefUpdate],
        atomic: bool,
    ) -> Result<Vec<std::result::Result<(), RefRejection>>> {
        self.commit_refs(updates, atomic, &NoJournal)
    }

    /// Apply `updates`, each a compare-and-swap on its old value, and the
    /// `journal`'s record, in one sled transaction; the database is flushed
    /// before returning.
    ///
    /// With `atomic`, all updates apply or none does. Without, each stale
    /// one is skipped and the others apply. When the repository had no refs
    /// and HEAD's branch is not created, HEAD is pointed at the best new
    /// branch (`main`, `master`, else the first by name) so that clones
    /// check something out.
    pub fn commit_refs(
        &self,
        updates: &[RefUpdate],
        atomic: bool,
        journal: &dyn Journal,
    ) -> Result<Vec<std::result::Result<(), RefRejection>>> {
        let was_empty = self.refs.is_empty();
        let extra = journal.trees();
        let mut trees: Vec<&sled::Tree> = vec![&self.refs, &self.repos];
        trees.extend(extra.iter());
        let settings_key = self.name.to_string();
        let outcome = trees[..].transaction(|t| {
            let (refs, repos, rest) = (&t[0], &t[1], &t[2..]);
            let results = compare(refs, updates, atomic)?;
            let applied: Vec<bool> = results.iter().map(|r| r.is_ok()).collect();
            if applied.contains(&true) {
                write(refs, updates, &applied)?;
                if was_empty {
                    choose_head(refs, repos, &settings_key, updates, &applied)?;
                }
            }
            journal.record(rest, &applied)?;
            Ok(results)
        });
        let results = match outcome {
            Ok(results) => results,
            Err(TransactionError::Abort(reason)) => return Err(Error::Rejected(reason)),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        self.db.flush()?;
        Ok(results)
    }
}

/// Each update's verdict against the current values. Atomic: the first
/// stale one is `Stale`, every other `AtomicFailed`.
fn compare(
    refs: &TransactionalTree,
    updates: &[RefUpdate],
    atomic: bool,
) -> TxResult<Vec<std::result::Result<(), RefRejection>>> {
    let mut results = Vec::with_capacity(updates.len());
    for u in updates {
        let current = refs
            .get(u.name.as_bytes())?
            .and_then(|v| oid_from(v.get(..20)));
        results.push(if current == u.old {
            Ok(())
        } else {
            Err(RefRejection::Stale)
        });
    }
    if atomic {
        if let Some(i) = results.iter().position(|r| r.is_err()) {
            for (n, r) in results.iter_mut().enumerate() {
                if n != i {
                    *r = Err(RefRejection::AtomicFailed);
                }
            }
        }
    }
    Ok(results)
}

fn write(refs: &TransactionalTree, updates: &[RefUpdate], applied: &[bool]) -> TxResult<()> {
    for (u, _) in updates.iter().zip(applied).filter(|(_, a)| **a) {
        match u.new {
            Some(new) => {
                let mut v = new.as_bytes().to_vec();
                if let Some(p) = u.new_peeled {
                    v.extend_from_slice(p.as_bytes());
                }
                refs.insert(u.name.as_bytes(), v)?;
            }
            None => {
                refs.remove(u.name.as_bytes())?;
            }
        }
    }
    Ok(())
}

/// Point HEAD at the best branch this commit created, if HEAD's branch does
/// not exist.
fn choose_head(
    refs: &TransactionalTree,
    repos: &TransactionalTree,
    key: &str,
    updates: &[RefUpdate],
    applied: &[bool],
) -> TxResult<()> {
    let Some(raw) = repos.get(key.as_bytes())? else {
        return Ok(());
    };
    let Ok(mut settings) = serde_json::from_slice::<RepoSettings>(&raw) else {
        return Ok(());
    };
    if refs.get(settings.head.as_bytes())?.is_some() {
        return Ok(());
    }
    let mut created: Vec<&str> = updates
        .iter()
        .zip(applied)
        .filter(|(u, a)| **a && u.new.is_some() && u.name.starts_with("refs/heads/"))
        .map(|(u, _)| u.name.as_str())
        .collect();
    created.sort_unstable();
    let pick = ["refs/heads/main", "refs/heads/master"]
        .into_iter()
        .find(|p| created.contains(p))
        .or(created.first().copied());
    if let Some(pick) = pick {
        settings.head = pick.to_owned();
        if let Ok(bytes) = serde_json::to_vec(&settings) {
            repos.insert(key.as_bytes(), bytes)?;
            tracing::info!(repo = %key, head = %pick, "HEAD points at the first pushed branch");
        }
    }
    Ok(())
}
