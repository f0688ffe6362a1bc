//! Repository maintenance on a running node: on request
//! (`POST /api/v1/repos/OWNER/NAME/maintain`, `guts-node repo maintain`) and
//! in the background after pushes and replicated updates.
//!
//! One repository is maintained at a time, node-wide, on its own thread at
//! a lower CPU priority (nice 10) with one pack-writing thread, so that
//! serving always has the other cores and the first claim on this one
//! (ADR 0011). What a run does: `guts_git::storage::maintain`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use guts_git::names::RepoName;
use guts_git::storage::{MaintainOptions, MaintainReport, Repo};
use tokio::sync::broadcast;
use utoipa_axum::router::OpenApiRouter;

use crate::error::{ApiError, NodeError};
use crate::http::Shared;
use crate::repos::{RepoEvent, Repos};
use crate::rest::RepoPath;

/// Background maintenance starts once a repository has this many packs
/// besides the ones the last maintenance wrote.
pub const AUTO_NEW_PACKS: usize = 8;
/// ... or once the packs added since hold this share (in percent) of the
/// maintained pack's bytes.
pub const AUTO_NEW_BYTES_PERCENT: u64 = 25;
/// ... or, never maintained, once its packs hold this many bytes.
pub const AUTO_FIRST_BYTES: u64 = 1024 * 1024;
/// A repository is maintained in the background only after this long
/// without pushes to it (a burst of pushes is maintained once).
pub const AUTO_QUIET: Duration = Duration::from_secs(10);
/// How often the background task looks at repositories that changed.
const AUTO_TICK: Duration = Duration::from_secs(2);
/// CPU priority of maintenance threads (higher is lower priority).
const NICENESS: i32 = 10;

/// Runs maintenance, one repository at a time.
pub struct Maintenance {
    repos: Arc<Repos>,
    running: tokio::sync::Mutex<()>,
}

impl Maintenance {
    /// Maintenance of `repos`' repositories.
    pub fn new(repos: Arc<Repos>) -> Arc<Self> {
        Arc::new(Maintenance {
            repos,
            running: tokio::sync::Mutex::new(()),
        })
    }

    /// Maintain `name` now (waits for a run in progress to end first).
    pub async fn run(&self, name: &RepoName) -> Result<MaintainReport, NodeError> {
        self.run_with(name, None).await
    }

    /// [`Maintenance::run`], reporting its phases into `progress`.
    pub async fn run_with(
        &self,
        name: &RepoName,
        progress: Option<Arc<crate::progress::Progress>>,
    ) -> Result<MaintainReport, NodeError> {
        let _turn = match self.running.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                if let Some(p) = &progress {
                    p.phase("waiting for other maintenance to end", "", None);
                }
                self.running.lock().await
            }
        };
        let repo = self.repos.storage().open_repo(name)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("guts-maintain".into())
            .spawn(move || {
                lower_priority();
                let result = repo.maintain(MaintainOptions {
                    threads: Some(1),
                    progress,
                });
                crate::memory::release();
                let _ = tx.send(result);
            })?;
        let report = rx
            .await
            .map_err(|_| NodeError::Internal("maintenance stopped unexpectedly".into()))??;
        Ok(report)
    }

    /// Maintain repositories in the background after they change (see the
    /// `AUTO_*` constants); runs until the event channel closes.
    pub fn spawn_auto(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let mut events = self.repos.subscribe();
        tokio::spawn(async move {
            let mut changed: HashMap<RepoName, Instant> = HashMap::new();
            let mut tick = tokio::time::interval(AUTO_TICK);
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(RepoEvent::Pushed { repo, .. } | RepoEvent::RefsMoved { repo, .. }) => {
                            changed.insert(repo, Instant::now());
                        }
                        Ok(RepoEvent::IdentityChanged { .. })
                        | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tick.tick() => me.run_quiet(&mut changed).await,
                }
            }
        });
    }

    async fn run_quiet(&self, changed: &mut HashMap<RepoName, Instant>) {
        let quiet: Vec<RepoName> = changed
            .iter()
            .filter(|(_, at)| at.elapsed() >= AUTO_QUIET)
            .map(|(n, _)| n.clone())
            .collect();
        for name in quiet {
            changed.remove(&name);
            let Ok(repo) = self.repos.storage().open_repo(&name) else {
                continue;
            };
            match due(&repo) {
                Ok(Some(_)) if !self.room_for(&repo) => {
                    tracing::warn!(repo = %name, "background maintenance skipped: not enough free disk for a copy of its packs");
                }
                Ok(Some(why)) => {
                    tracing::info!(repo = %name, why, "background maintenance");
                    if let Err(e) = self.run(&name).await {
                        tracing::warn!(repo = %name, error = %e, "background maintenance failed");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(repo = %name, error = %e, "cannot tell whether maintenance is due")
                }
            }
        }
    }
}

impl Maintenance {
    /// Whether the disk holds a second copy of `repo`'s packs (maintenance
    /// writes the new packs before it retires the old) above the node's
    /// free-space floor.
    fn room_for(&self, repo: &Repo) -> bool {
        let needed = repo
            .pack_bytes()
            .unwrap_or(0)
            .saturating_add(self.repos.rules().min_free_bytes);
        crate::rules::free_bytes(&repo.objects_dir()).is_none_or(|free| free >= needed)
    }
}

/// Why `repo` should be maintained now, if it should.
pub fn due(repo: &Repo) -> Result<Option<&'static str>, NodeError> {
    let pack_dir = repo.objects_dir().join("pack");
    let state = repo.maintenance_state();
    let mut maintained = 0u64;
    let mut new_bytes = 0u64;
    let mut new_packs = 0usize;
    for entry in std::fs::read_dir(&pack_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".idx") else {
            continue;
        };
        let bytes = std::fs::metadata(pack_dir.join(format!("{stem}.pack"))).map_or(0, |m| m.len());
        match &state {
            Some(s) if s.pack == stem || s.cruft.as_deref() == Some(stem) => maintained += bytes,
            _ => {
                new_packs += 1;
                new_bytes += bytes;
            }
        }
    }
    Ok(if state.is_none() {
        (new_bytes >= AUTO_FIRST_BYTES || new_packs >= AUTO_NEW_PACKS).then_some("never maintained")
    } else if new_packs >= AUTO_NEW_PACKS {
        Some("many packs since the last maintenance")
    } else if new_packs > 0 && new_bytes * 100 >= maintained * AUTO_NEW_BYTES_PERCENT {
        Some("much new data since the last maintenance")
    } else {
        None
    })
}

/// Lower the calling thread's CPU priority (Linux: per thread; threads it
/// starts inherit it).
fn lower_priority() {
    // SAFETY: setpriority with PRIO_PROCESS and who = 0 changes the calling
    // thread's nice value only; no memory is touched.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS) };
    if rc != 0 {
        tracing::debug!("could not lower the maintenance thread's priority");
    }
}

/// The maintenance route.
pub fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new().routes(utoipa_axum::routes!(maintain_repo))
}

/// `POST`: operator only; answers with the run's report when it is done,
/// or with its progress and then the report (`Accept: application/x-ndjson`,
/// see `crate::progress`).
#[utoipa::path(
    post,
    path = "/api/v1/repos/{owner}/{name}/maintain",
    tag = "repos",
    params(RepoPath),
    security(("operator" = [])),
    responses(
        (status = 200, description = "The run's report; with `Accept: application/x-ndjson`, progress lines and then `{\"result\": MaintainReport}` or `{\"error\": {status, error}}`", content(
            (MaintainReport = "application/json"),
            (String = "application/x-ndjson"),
        )),
        (status = 401, description = "No or a wrong operator token", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such repository", body = crate::openapi::ErrorBody),
    )
)]
async fn maintain_repo(
    State(state): State<Shared>,
    Path(RepoPath { owner, name }): Path<RepoPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    crate::auth::require_operator(&state.token, &headers)?;
    let st = state.clone();
    let name = tokio::task::spawn_blocking(move || st.repos.resolve(&owner, &name))
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
    let progress: Option<Arc<crate::progress::Progress>> =
        crate::progress::wanted(&headers).then(Arc::default);
    let reported = progress.clone();
    let work = async move {
        let report = state.maintenance.run_with(&name, reported).await?;
        tracing::info!(repo = %name, ?report, "maintenance on request");
        Ok(report)
    };
    Ok(match progress {
        Some(p) => crate::progress::stream(p, work),
        None => Json(work.await?).into_response(),
    })
}

/// Shared by the REST repository view: packs and the last run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MaintenanceView {
    /// Packs (with an index) the repository has.
    pub packs: usize,
    /// When maintenance last ran, seconds since the epoch.
    pub maintained_at: Option<u64>,
}

impl MaintenanceView {
    /// Read it from disk.
    pub fn of(repo: &Repo) -> Result<Self, NodeError> {
        Ok(MaintenanceView {
            packs: repo.pack_count()?,
            maintained_at: repo.maintenance_state().map(|s| s.at),
        })
    }
}
