//! What the git layer's integration tests share.

use guts_git::receive_pack::{Command, PushPolicy};
use guts_git::storage::{RefRejection, RefUpdate, Repo};

/// Accepts every push and applies it with no journal: the git layer's own
/// tests are not about authorization.
pub struct Open;

impl PushPolicy for Open {
    type Authorized = ();
    fn cert_nonce(&self) -> Option<String> {
        None
    }
    fn authorize(&self, _: Option<&str>, _: &[Command]) -> Result<(), String> {
        Ok(())
    }
    fn commit(
        &self,
        repo: &Repo,
        _: (),
        updates: &[RefUpdate],
        atomic: bool,
    ) -> guts_git::Result<Vec<Result<(), RefRejection>>> {
        repo.update_refs(updates, atomic)
    }
}
