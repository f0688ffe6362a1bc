//! `GET /api/v1/events`: ref updates as server-sent events (ADR 0020).
//!
//! One `ref-update` event per ref move this node commits: a push it
//! accepted (`origin: local`) or an update it applied from a peer
//! (`origin: replicated`). The events come from the domain layer's
//! broadcast channel ([`Repos::subscribe`](crate::repos::Repos::subscribe)),
//! so a subscriber sees exactly what the refs did, after the transaction.
//!
//! Bounds: at most [`MAX_SUBSCRIBERS`] streams at once (more are refused
//! with 503); each stream buffers what the broadcast channel holds, and a
//! subscriber that falls further behind gets a `lagged` event saying how
//! many it missed, then the stream goes on. Reconnection with
//! `Last-Event-ID` does not replay anything: the log records signed
//! updates, not the ref moves the conflict rule made of them; a client that
//! reconnects reads `/api/v1/repos/OWNER/NAME/updates` for what it missed
//! (an event's `seq` is the log position there).
//!
//! Public, like the updates list that holds the same information.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use guts_git::names::RepoName;
use serde::Serialize;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::error::{ApiError, NodeError};
use crate::http::Shared;
use crate::repos::RepoEvent;
use crate::rest::blocking;

/// Event streams open at once, node-wide; one more is refused (503).
pub const MAX_SUBSCRIBERS: usize = 256;
/// How often an idle stream gets a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Repositories one stream may filter on.
pub const MAX_FILTER_REPOS: usize = 64;

/// The event streams' shared state: the subscriber cap and the shutdown
/// signal that ends every stream (so the server's graceful shutdown, which
/// waits for open responses, is not held up by them).
pub struct EventHub {
    slots: Arc<Semaphore>,
    closing: CancellationToken,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            slots: Arc::new(Semaphore::new(MAX_SUBSCRIBERS)),
            closing: CancellationToken::new(),
        }
    }
}

impl EventHub {
    /// End every stream now and refuse new ones (the node is stopping).
    pub fn close(&self) {
        self.closing.cancel();
        self.slots.close();
    }
}

/// Where a ref update came from.
#[derive(Serialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A push this node accepted.
    Local,
    /// An update this node applied from a peer.
    Replicated,
}

/// The data of a `ref-update` event.
#[derive(Serialize, ToSchema, Debug)]
pub struct RefUpdateEvent {
    /// The repository, `OWNER/NAME` with the owner's DID id.
    pub repo: String,
    /// The same repository through each of its owner's aliases (`ALIAS/NAME`).
    pub aliases: Vec<String>,
    /// The repository id.
    pub repo_id: Option<String>,
    /// The ref, e.g. `refs/heads/main`.
    #[serde(rename = "ref")]
    pub ref_name: String,
    /// Its old value (40 hex digits), `null` if it did not exist.
    pub old: Option<String>,
    /// Its new value, `null` if it was deleted.
    pub new: Option<String>,
    /// The signer of the push certificate (`did:key:...`).
    pub signer: Option<String>,
    /// `local` (pushed to this node) or `replicated` (applied from a peer).
    pub origin: Origin,
    /// The node that accepted the push: this node's libp2p peer id when
    /// local (`null` without p2p), the pushee URL its certificate names
    /// when replicated (`null` if it names none).
    pub origin_node: Option<String>,
    /// The update's position in this node's log of the repository (see
    /// `/api/v1/repos/{owner}/{name}/updates`).
    pub seq: u64,
    /// When this node committed it, seconds since the epoch.
    pub time: u64,
}

/// A stream's repository filter: `None` lets every repository through.
type Filter = Option<HashSet<RepoName>>;

/// The `repo` parameters of the query (repeatable, each a comma list),
/// resolved to canonical names. Any other parameter is refused.
fn parse_filter(state: &Shared, query: Option<&str>) -> Result<Filter, NodeError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| NodeError::Invalid(format!("bad query string: {e}")))?;
    let mut names = HashSet::new();
    for (key, value) in pairs {
        if key != "repo" {
            return Err(NodeError::Invalid(format!(
                "unknown parameter `{key}` (only `repo=OWNER/NAME` is accepted)"
            )));
        }
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (owner, name) = item.split_once('/').ok_or_else(|| {
                NodeError::Invalid(format!("`{item}` is not of the form OWNER/NAME"))
            })?;
            let name = state.repos.resolve(owner, name)?;
            state.repos.open_repo(&name)?;
            names.insert(name);
            if names.len() > MAX_FILTER_REPOS {
                return Err(NodeError::Invalid(format!(
                    "at most {MAX_FILTER_REPOS} repositories per stream"
                )));
            }
        }
    }
    if names.is_empty() {
        return Err(NodeError::Invalid("`repo` names no repository".into()));
    }
    Ok(Some(names))
}

/// The stream of ref updates, as server-sent events.
///
/// `GET /api/v1/events`; see the module documentation.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(
        ("repo" = Option<Vec<String>>, Query, explode = true,
         description = "Only these repositories, `OWNER/NAME` (owner id or alias); repeatable or a comma list"),
        ("Last-Event-ID" = Option<String>, Header,
         description = "Accepted and ignored: nothing is replayed; read the repository's updates list from the `seq` of the last event seen"),
    ),
    responses(
        (status = 200, description = "A stream of `ref-update` events (the data is a RefUpdateEvent), `lagged` events (`{\"missed\": N}`) when the client fell behind, and keep-alive comments",
         content_type = "text/event-stream", body = RefUpdateEvent),
        (status = 400, description = "Malformed filter", body = crate::openapi::ErrorBody),
        (status = 404, description = "A filtered repository does not exist here", body = crate::openapi::ErrorBody),
        (status = 503, description = "Too many event streams are open", body = crate::openapi::ErrorBody),
    )
)]
pub(crate) async fn events(
    State(state): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let st = state.clone();
    let filter = blocking(move || parse_filter(&st, query.as_deref())).await?;
    let permit = Arc::clone(&state.events.slots)
        .try_acquire_owned()
        .map_err(|_| NodeError::Busy {
            what: "event streams",
            retry_after: Duration::from_secs(10),
        })?;
    // Subscribed before the response starts: what is committed after the
    // client has the headers is in its stream.
    let rx = state.repos.subscribe();
    let peer_id = match &state.p2p {
        Some(p2p) => p2p.net.status().await.ok().map(|s| s.peer_id.to_string()),
        None => None,
    };
    tracing::debug!(
        filtered = filter.as_ref().map_or(0, HashSet::len),
        "event stream opened"
    );
    let closing = state.events.closing.clone();
    let sub = Arc::new(Subscriber {
        state,
        filter,
        peer_id,
        _permit: permit,
    });
    let stream = relay(rx, closing, move |ev| {
        let sub = Arc::clone(&sub);
        async move { sub.events_of(ev).await }
    })
    .map(|out| Ok::<_, Infallible>(out.into_sse()));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// What a stream sends.
#[derive(Debug)]
enum Out {
    /// The subscriber fell behind and missed this many domain events.
    Lagged(u64),
    /// One ref moved.
    Update {
        /// The event id.
        id: String,
        /// The event data.
        data: Box<RefUpdateEvent>,
    },
}

impl Out {
    fn into_sse(self) -> Event {
        match self {
            Out::Lagged(missed) => Event::default()
                .event("lagged")
                .data(serde_json::json!({ "missed": missed }).to_string()),
            Out::Update { id, data } => match serde_json::to_string(&data) {
                Ok(json) => Event::default().event("ref-update").id(id).data(json),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode an event");
                    Event::default().comment("an event could not be encoded")
                }
            },
        }
    }
}

/// The stream of what `render` makes of each event of `rx`, with a
/// [`Out::Lagged`] where the receiver fell behind; ends when `closing` is
/// cancelled or the channel closes.
fn relay<F, Fut>(
    rx: broadcast::Receiver<RepoEvent>,
    closing: CancellationToken,
    render: F,
) -> impl Stream<Item = Out> + Send
where
    F: Fn(RepoEvent) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<Out>> + Send,
{
    let pending = std::collections::VecDeque::new();
    let render = Arc::new(render);
    futures_util::stream::unfold((rx, pending), move |(mut rx, mut pending)| {
        let closing = closing.clone();
        let render = Arc::clone(&render);
        async move {
            loop {
                if let Some(out) = pending.pop_front() {
                    return Some((out, (rx, pending)));
                }
                let received = tokio::select! {
                    r = rx.recv() => r,
                    () = closing.cancelled() => return None,
                };
                match received {
                    Ok(ev) => pending.extend(render(ev).await),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "event subscriber lagged");
                        return Some((Out::Lagged(missed), (rx, pending)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
}

/// One open stream: its filter, this node's peer id and its slot.
struct Subscriber {
    state: Shared,
    filter: Filter,
    peer_id: Option<String>,
    _permit: OwnedSemaphorePermit,
}

impl Subscriber {
    /// The SSE events of one domain event (none if filtered out).
    async fn events_of(&self, ev: RepoEvent) -> Vec<Out> {
        let RepoEvent::RefsMoved {
            repo,
            moves,
            replicated,
            seq,
            signer,
            pushee,
            at,
        } = ev
        else {
            return Vec::new();
        };
        if self.filter.as_ref().is_some_and(|f| !f.contains(&repo)) {
            return Vec::new();
        }
        let st = self.state.clone();
        let r = repo.clone();
        let identity = blocking(move || st.repos.identities().current(&r))
            .await
            .ok()
            .flatten();
        let repo_id = identity.as_ref().map(|i| i.id.to_string());
        let aliases: Vec<String> = identity
            .map(|i| i.doc.body().aliases.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|a| format!("{a}/{}", repo.name()))
            .collect();
        let (origin, origin_node) = if replicated {
            (Origin::Replicated, pushee)
        } else {
            (Origin::Local, self.peer_id.clone())
        };
        let id_prefix = repo_id.clone().unwrap_or_else(|| repo.to_string());
        moves
            .into_iter()
            .enumerate()
            .map(|(i, (ref_name, old, new))| Out::Update {
                id: format!("{id_prefix}:{seq}:{i}"),
                data: Box::new(RefUpdateEvent {
                    repo: repo.to_string(),
                    aliases: aliases.clone(),
                    repo_id: repo_id.clone(),
                    ref_name,
                    old: old.map(|o| o.to_string()),
                    new: new.map(|o| o.to_string()),
                    signer: signer.clone(),
                    origin,
                    origin_node: origin_node.clone(),
                    seq,
                    time: at,
                }),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(seq: u64) -> RepoEvent {
        RepoEvent::RefsMoved {
            repo: RepoName::new("alice", "demo").expect("name"),
            moves: Vec::new(),
            replicated: false,
            seq,
            signer: None,
            pushee: None,
            at: 0,
        }
    }

    /// The stream a test reads: each `RefsMoved` rendered as
    /// `Lagged(1000 + seq)` (the variant that needs no data), to tell
    /// rendered events from real lag reports.
    fn seqs(
        rx: broadcast::Receiver<RepoEvent>,
        closing: CancellationToken,
    ) -> impl Stream<Item = Out> + Send {
        relay(rx, closing, |ev| async move {
            match ev {
                RepoEvent::RefsMoved { seq, .. } => vec![Out::Lagged(1000 + seq)],
                _ => Vec::new(),
            }
        })
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_how_many_it_missed_and_goes_on() {
        let (tx, rx) = broadcast::channel(2);
        let closing = CancellationToken::new();
        let mut stream = Box::pin(seqs(rx, closing.clone()));
        for seq in 1..=5 {
            tx.send(moved(seq)).expect("a receiver");
        }
        // Three were pushed out of the 2-event buffer; 4 and 5 remain.
        let got: Vec<u64> = (&mut stream)
            .take(3)
            .map(|o| match o {
                Out::Lagged(n) => n,
                Out::Update { .. } => panic!("no update expected"),
            })
            .collect()
            .await;
        assert_eq!(got, vec![3, 1004, 1005]);
        tx.send(moved(6)).expect("a receiver");
        assert!(matches!(stream.next().await, Some(Out::Lagged(1006))));
        // The node stopping ends the stream.
        closing.cancel();
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_channel_closes() {
        let (tx, rx) = broadcast::channel(4);
        let mut stream = Box::pin(seqs(rx, CancellationToken::new()));
        tx.send(moved(1)).expect("a receiver");
        drop(tx);
        assert!(matches!(stream.next().await, Some(Out::Lagged(1001))));
        assert!(stream.next().await.is_none());
    }

    #[test]
    fn events_are_encoded_as_sse() {
        let lagged = format!("{:?}", Out::Lagged(7).into_sse());
        assert!(
            lagged.contains("event: lagged") && lagged.contains(r#"{\"missed\":7}"#),
            "{lagged}"
        );
    }
}
