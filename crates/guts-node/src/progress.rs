//! Progress of long REST operations (`repo maintain`, `seed`).
//!
//! A client that sends `Accept: application/x-ndjson` gets the answer as
//! newline-delimited JSON: a [`Line::Progress`] whenever the operation's
//! [`Progress`] changed (at most every [`REPORT_EVERY`]), then one
//! [`Line::Result`] or [`Line::Error`]. Other clients get the plain JSON
//! answer when the operation ends, as before. The CLI draws the progress
//! lines as a progress bar ([`render`]).
//!
//! Seeding happens inside the replication service; the node's replica
//! reports into the [`Board`] entry the seed request registered for that
//! repository.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use guts_git::names::RepoName;
pub use guts_git::progress::Progress;
use serde::{Deserialize, Serialize};

use crate::error::NodeError;

/// The media type of a progress stream.
pub const NDJSON: &str = "application/x-ndjson";
/// How often a changed progress is reported.
pub const REPORT_EVERY: Duration = Duration::from_millis(200);

/// One line of a progress stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line<T> {
    /// Where the operation is.
    Progress {
        /// The phase, e.g. `writing the reachable pack`.
        phase: String,
        /// Units done in the phase.
        done: u64,
        /// Units in the phase, if known.
        total: Option<u64>,
        /// What is counted: `objects`, `bytes`, `updates`.
        unit: String,
    },
    /// The operation succeeded: the body the plain answer would have had.
    Result(T),
    /// The operation failed.
    Error {
        /// The HTTP status the plain answer would have had.
        status: u16,
        /// Why.
        error: String,
    },
}

/// Whether the request asked for a progress stream.
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with(NDJSON)))
}

/// Run `work` and answer with its progress and its outcome as a stream.
/// The work goes on if the client goes away (maintenance and seeding
/// must not stop half-way because a terminal closed).
pub fn stream<T, F>(progress: Arc<Progress>, work: F) -> Response
where
    T: Serialize + Send + 'static,
    F: Future<Output = Result<T, NodeError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    tokio::spawn(async move {
        let work = tokio::spawn(work);
        tokio::pin!(work);
        let mut ticks = tokio::time::interval(REPORT_EVERY);
        let mut reporter = Reporter::default();
        let outcome = loop {
            tokio::select! {
                done = &mut work => break done.map_err(|e| NodeError::Internal(e.to_string())).and_then(|r| r),
                _ = ticks.tick() => {
                    for line in reporter.lines(&progress) {
                        // A client gone: stop reporting, let the work end.
                        if tx.send(Ok(encode(&line))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        // Phases entered since the last tick are reported too.
        for line in reporter.lines(&progress) {
            let _ = tx.send(Ok(encode(&line))).await;
        }
        let last = match outcome {
            Ok(v) => encode(&Line::Result(v)),
            Err(e) => encode(&Line::<()>::Error {
                status: crate::error::status_for(&e).as_u16(),
                error: e.to_string(),
            }),
        };
        let _ = tx.send(Ok(last)).await;
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, NDJSON)], body).into_response();
    crate::http::no_cache(resp.headers_mut());
    resp
}

/// What a stream reported last: it reports what changed since.
#[derive(Default)]
struct Reporter {
    phases: usize,
    last: Option<guts_git::progress::Snapshot>,
}

impl Reporter {
    /// Progress lines for what changed: every phase entered and left since
    /// the last call (so that a short phase is not missed), then the
    /// current state if it changed.
    fn lines(&mut self, progress: &Progress) -> Vec<Line<()>> {
        let mut lines: Vec<Line<()>> = progress
            .phases_after(self.phases)
            .into_iter()
            .map(|phase| Line::Progress {
                phase: phase.to_owned(),
                done: 0,
                total: None,
                unit: String::new(),
            })
            .collect();
        self.phases = progress.phase_count();
        if self.phases == 0 {
            return lines;
        }
        let now = progress.snapshot();
        if self.last != Some(now) || !lines.is_empty() {
            self.last = Some(now);
            lines.push(Line::Progress {
                phase: now.phase.to_owned(),
                done: now.done,
                total: now.total,
                unit: now.unit.to_owned(),
            });
        }
        lines
    }
}

fn encode<T: Serialize>(line: &Line<T>) -> Vec<u8> {
    let mut out = serde_json::to_vec(line).unwrap_or_else(|e| {
        format!("{{\"error\":{{\"status\":500,\"error\":\"cannot encode: {e}\"}}}}").into_bytes()
    });
    out.push(b'\n');
    out
}

/// Progress records of the seeds under way, by repository.
#[derive(Default)]
pub struct Board {
    map: Mutex<HashMap<RepoName, Arc<Progress>>>,
}

/// A [`Board`] entry; removed when dropped.
pub struct Watch<'a> {
    board: &'a Board,
    repo: RepoName,
    /// The entry.
    pub progress: Arc<Progress>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut map = self.board.map.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.repo)
            .is_some_and(|p| Arc::ptr_eq(p, &self.progress))
        {
            map.remove(&self.repo);
        }
    }
}

impl Board {
    /// Record the progress of `repo` in `progress` until the watch drops.
    pub fn watch(&self, repo: &RepoName, progress: Arc<Progress>) -> Watch<'_> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(repo.clone(), Arc::clone(&progress));
        Watch {
            board: self,
            repo: repo.clone(),
            progress,
        }
    }

    /// The progress record of `repo`, if someone watches it.
    pub fn get(&self, repo: &RepoName) -> Option<Arc<Progress>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(repo).cloned()
    }
}

/// A reader that counts what is consumed from it into a [`Progress`].
pub struct Counted<'a> {
    inner: &'a mut dyn std::io::BufRead,
    progress: &'a Progress,
}

impl<'a> Counted<'a> {
    /// Count what is read from `inner` into `progress`.
    pub fn new(inner: &'a mut dyn std::io::BufRead, progress: &'a Progress) -> Self {
        Counted { inner, progress }
    }
}

impl std::io::Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

impl std::io::BufRead for Counted<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
        self.progress.add(amt as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read};

    #[test]
    fn counted_counts_reads_and_consumes() {
        let p = Progress::default();
        let mut src: &[u8] = b"0123456789";
        let mut r = Counted::new(&mut src, &p);
        let mut buf = [0u8; 4];
        assert_eq!(r.read(&mut buf).ok(), Some(4));
        let n = r.fill_buf().map(|b| b.len()).unwrap_or(0);
        r.consume(n);
        assert_eq!(p.snapshot().done, 10);
    }

    #[test]
    fn a_watch_ends_with_its_request() {
        let board = Board::default();
        let repo = RepoName::new("z6MkOwner", "demo").expect("name");
        {
            let _w = board.watch(&repo, Arc::default());
            assert!(board.get(&repo).is_some());
        }
        assert!(board.get(&repo).is_none());
    }

    #[test]
    fn ndjson_is_asked_by_accept() {
        let mut h = HeaderMap::new();
        assert!(!wanted(&h));
        h.insert(header::ACCEPT, "application/json".parse().expect("value"));
        assert!(!wanted(&h));
        h.insert(
            header::ACCEPT,
            "application/json, application/x-ndjson"
                .parse()
                .expect("value"),
        );
        assert!(wanted(&h));
    }
}
