//! A push (receive-pack), the same over smart HTTP (`crate::http`) and
//! over a WebSocket (`crate::ws`): who may push and how many bytes, checked
//! before the pack is read; then receive-pack under the node's policy, with
//! its metrics.

use std::io::{BufRead, Write};
use std::sync::Arc;

use guts_git::names::RepoName;
use guts_git::receive_pack::PushPolicy;
use guts_git::storage::Repo;
use guts_identity::PushToken;

use tokio::sync::OwnedSemaphorePermit;

use crate::error::NodeError;
use crate::http::Shared;
use crate::identity::Identity;
use crate::limits::{Work, WorkSlots};
use crate::metrics::git::Counted;
use crate::metrics::Metrics;
use crate::policy::SignedPushPolicy;
use crate::repos::Repos;

/// What a push is checked against, found before its pack is read.
pub(crate) struct PushGate {
    identity: Identity,
    /// Bytes the push may add (quota, free disk), or why it may add none.
    room: Result<u64, NodeError>,
    token: Option<PushToken>,
}

/// Refuse repositories nobody may push to before anything is streamed and
/// find how many bytes the push may add. A token that no longer authorizes
/// anything is refused (401) before the pack is read.
pub(crate) async fn gate(
    state: &Shared,
    name: &RepoName,
    token: Option<PushToken>,
) -> Result<PushGate, NodeError> {
    let (repos, name) = (Arc::clone(&state.repos), name.clone());
    tokio::task::spawn_blocking(move || {
        let identity = repos.identity(&name)?;
        if let Some(token) = &token {
            crate::tokens::check(token, &identity, crate::auth::now())?;
        }
        Ok(PushGate {
            identity,
            room: repos.push_room(&name),
            token,
        })
    })
    .await
    .map_err(|e| NodeError::Internal(e.to_string()))?
}

/// One receive-pack run. Must be called from a blocking thread.
pub(crate) struct Push<'a> {
    /// The node's repositories.
    pub repos: &'a Repos,
    /// Where the push is counted.
    pub metrics: &'a Metrics,
    /// The repository pushed to.
    pub repo: &'a Repo,
    /// Its name.
    pub name: &'a RepoName,
    /// The request's host (a push certificate's pushee may name it).
    pub host: Option<&'a str>,
    /// git's `0000` probe before a large push (HTTP): counted apart.
    pub probe: bool,
}

impl Push<'_> {
    /// Run receive-pack on a request body `input` (smart HTTP: the client
    /// had the advertisement from another request), answering on `out`.
    pub(crate) fn run(&self, gate: PushGate, input: &mut dyn BufRead, out: &mut dyn Write) {
        let (opts, policy) = self.prepare(gate);
        self.receive(opts, &policy, input, out);
    }

    /// Run receive-pack on a stateful connection: the ref advertisement,
    /// with a push-certificate nonce, then the client's commands and pack.
    /// `admission` (the push slot taken before the connection was
    /// accepted) covers the advertisement; the push takes a slot from
    /// `slots` again once the client's commands arrive, so a client that
    /// waits holds none. Must run on a blocking thread of the runtime.
    pub(crate) fn run_connected(
        &self,
        gate: PushGate,
        admission: OwnedSemaphorePermit,
        slots: &WorkSlots,
        input: &mut dyn BufRead,
        out: &mut dyn Write,
    ) {
        let (opts, policy) = self.prepare(gate);
        let nonce = policy.cert_nonce();
        let sent = guts_git::protocol::advertise_refs(
            self.repo,
            guts_git::protocol::Service::ReceivePack,
            guts_git::protocol::Version::V0,
            nonce.as_deref(),
            &mut *out,
        )
        .and_then(|()| out.flush().map_err(guts_git::Error::Io));
        drop(admission);
        if let Err(e) = sent {
            tracing::debug!(repo = %self.name, error = %e, "advertisement not delivered");
            return;
        }
        // The client's commands (or its goodbye) arrive first.
        if input.fill_buf().map_or(true, |b| b.is_empty()) {
            return;
        }
        let permit = tokio::runtime::Handle::current().block_on(slots.acquire(Work::Push));
        let _permit = match permit {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("ERR {e}\n");
                let _ = guts_git::pktline::write_pkt(&mut *out, msg.as_bytes());
                let _ = out.flush();
                return;
            }
        };
        self.receive(opts, &policy, input, out);
    }

    /// The receive options and policy of a push under `gate`.
    fn prepare(
        &self,
        gate: PushGate,
    ) -> (guts_git::receive_pack::ReceiveOptions, SignedPushPolicy<'_>) {
        let mut opts = self.repos.receive_options();
        let refusal = match gate.room {
            Ok(room) => {
                // The quota left bounds the pack and, through it, the
                // bytes its objects may inflate to.
                opts.max_pack_bytes = opts.max_pack_bytes.min(room);
                opts.max_inflated_bytes = opts
                    .max_inflated_bytes
                    .min(guts_git::limits::inflated_budget(room));
                None
            }
            Err(e) => Some(e.to_string()),
        };
        let policy =
            SignedPushPolicy::with_identity(self.repos, self.name, gate.identity, self.host)
                .refusing(refusal)
                .with_token(gate.token);
        (opts, policy)
    }

    fn receive(
        &self,
        opts: guts_git::receive_pack::ReceiveOptions,
        policy: &SignedPushPolicy<'_>,
        input: &mut dyn BufRead,
        out: &mut dyn Write,
    ) {
        let mut input = Counted::new(input);
        let result = guts_git::receive_pack::receive_pack(self.repo, &mut input, out, opts, policy);
        self.metrics
            .git
            .receive_pack(self.probe, input.bytes, &result);
        if let Err(e) = result {
            tracing::warn!(repo = %self.name, error = %e, "receive-pack failed");
        }
        crate::memory::release();
    }
}
