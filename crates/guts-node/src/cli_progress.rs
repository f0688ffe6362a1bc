//! The CLI's side of `crate::progress`: ask the node for a progress stream,
//! draw it as a progress bar on stderr (when stderr is a terminal; one line
//! per phase otherwise, for logs), and give back the operation's result.

use std::io::{BufRead, BufReader, IsTerminal};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::DeserializeOwned;

use crate::error::NodeError;
use crate::progress::{Line, NDJSON};

/// Longest progress line accepted from the node.
const MAX_LINE: u64 = 1 << 20;

/// The `Accept` header that asks for a progress stream.
pub fn accept() -> (&'static str, &'static str) {
    ("Accept", NDJSON)
}

/// Read a progress stream (the response to a request sent with [`accept`]),
/// drawing it, and return its result; `what` names the operation in errors.
pub fn follow<T: DeserializeOwned>(
    resp: ureq::http::Response<ureq::Body>,
    what: &str,
) -> Result<T, NodeError> {
    let resp = crate::client::check(resp, what)?;
    let streamed = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(NDJSON));
    if !streamed {
        // A node from before progress streams answers with the result.
        return crate::client::read_json(resp);
    }
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut bar = Bar::new();
    loop {
        let mut line = String::new();
        let n = std::io::Read::take(&mut reader, MAX_LINE)
            .read_line(&mut line)
            .map_err(|e| {
                NodeError::Client(format!("{what}: reading the node's answer failed: {e}"))
            })?;
        if n == 0 {
            bar.finish();
            return Err(NodeError::Client(format!(
                "{what}: the node closed the connection before the operation ended (see its log)"
            )));
        }
        match serde_json::from_str::<Line<T>>(&line) {
            Ok(Line::Progress {
                phase,
                done,
                total,
                unit,
            }) => bar.show(&phase, done, total, &unit),
            Ok(Line::Result(v)) => {
                bar.finish();
                return Ok(v);
            }
            Ok(Line::Error { status, error }) => {
                bar.finish();
                return Err(NodeError::Client(format!(
                    "{what} failed ({status}): {error}"
                )));
            }
            Err(e) => {
                bar.finish();
                return Err(NodeError::Client(format!(
                    "{what}: bad progress line from the node: {e}"
                )));
            }
        }
    }
}

/// The progress bar of one operation: one bar per phase.
struct Bar {
    bar: Option<ProgressBar>,
    phase: String,
    terminal: bool,
}

impl Bar {
    fn new() -> Self {
        Bar {
            bar: None,
            phase: String::new(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, phase: &str, done: u64, total: Option<u64>, unit: &str) {
        if phase != self.phase {
            self.finish();
            self.phase = phase.to_owned();
            if !self.terminal {
                eprintln!("{phase}...");
                return;
            }
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.set_style(style(total.is_some(), unit));
            bar.set_prefix(phase.to_owned());
            bar.set_message(unit.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_position(done);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

fn style(bounded: bool, unit: &str) -> ProgressStyle {
    let template = match (bounded, unit) {
        (true, "bytes") => "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {elapsed}",
        (true, _) => "{prefix} [{bar:30}] {human_pos}/{human_len} {msg} {elapsed}",
        (false, "bytes") => "{spinner} {prefix}: {bytes} {bytes_per_sec} {elapsed}",
        (false, "") => "{spinner} {prefix} {elapsed}",
        (false, _) => "{spinner} {prefix}: {human_pos} {msg} {elapsed}",
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    style.progress_chars("=> ")
}
