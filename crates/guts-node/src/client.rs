//! The `repo` subcommands: a small client of the node's REST API.

use std::path::PathBuf;

use guts_git::names::RepoName;

use crate::config::{default_data_dir, DEFAULT_HTTP_LISTEN};
use crate::error::NodeError;
use crate::http::{RepoDetail, RepoSummary};
use crate::RepoAction;

fn node_url(node: Option<String>, data_dir: Option<PathBuf>) -> String {
    if let Some(n) = node {
        return n.trim_end_matches('/').to_owned();
    }
    let dir = data_dir.unwrap_or_else(default_data_dir);
    match std::fs::read_to_string(dir.join("http.addr")) {
        Ok(addr) => format!("http://{}", addr.trim()),
        Err(_) => format!("http://{DEFAULT_HTTP_LISTEN}"),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn check(
    resp: ureq::http::Response<ureq::Body>,
    what: &str,
) -> Result<ureq::http::Response<ureq::Body>, NodeError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.into_body().read_to_string().unwrap_or_default();
    let msg = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or(text);
    Err(NodeError::Client(format!(
        "{what} failed ({status}): {msg}"
    )))
}

fn client_err(url: &str) -> impl Fn(ureq::Error) -> NodeError + '_ {
    move |e| {
        NodeError::Client(format!(
            "cannot reach the node at {url}: {e} (is `guts-node run` running? see --node)"
        ))
    }
}

/// Run one `repo` subcommand.
pub fn repo_command(
    action: RepoAction,
    node: Option<String>,
    data_dir: Option<PathBuf>,
) -> Result<(), NodeError> {
    let base = node_url(node, data_dir);
    let agent = agent();
    let api = format!("{base}/api/v1/repos");
    match action {
        RepoAction::Create { name } => {
            let n = RepoName::parse(&name)?;
            let resp = agent
                .post(&api)
                .send_json(serde_json::json!({"owner": n.owner(), "name": n.name()}))
                .map_err(client_err(&base))?;
            check(resp, "create")?;
            println!("created {n}: git remote add origin {base}/{n}.git");
        }
        RepoAction::List => {
            let resp = check(agent.get(&api).call().map_err(client_err(&base))?, "list")?;
            let repos: Vec<RepoSummary> = resp
                .into_body()
                .read_json()
                .map_err(|e| NodeError::Client(format!("bad response: {e}")))?;
            for r in repos {
                println!("{}/{}\t{base}{}", r.owner, r.name, r.path);
            }
        }
        RepoAction::Show { name } => {
            let n = RepoName::parse(&name)?;
            let resp = check(
                agent
                    .get(&format!("{api}/{n}"))
                    .call()
                    .map_err(client_err(&base))?,
                "show",
            )?;
            let d: RepoDetail = resp
                .into_body()
                .read_json()
                .map_err(|e| NodeError::Client(format!("bad response: {e}")))?;
            println!("repository  {}/{}", d.owner, d.name);
            println!("url         {base}/{n}.git");
            println!("HEAD        {}", d.head);
            println!("objects     {}", d.object_count);
            println!("size        {} bytes", d.size_bytes);
            println!("deny non-fast-forwards  {}", d.deny_non_fast_forwards);
            for (r, id) in d.refs {
                println!("{id} {r}");
            }
        }
        RepoAction::Delete { name } => {
            let n = RepoName::parse(&name)?;
            check(
                agent
                    .delete(&format!("{api}/{n}"))
                    .call()
                    .map_err(client_err(&base))?,
                "delete",
            )?;
            println!("deleted {n}");
        }
        RepoAction::Set {
            name,
            deny_non_fast_forwards,
        } => {
            let n = RepoName::parse(&name)?;
            let resp = agent
                .patch(&format!("{api}/{n}"))
                .send_json(serde_json::json!({"deny_non_fast_forwards": deny_non_fast_forwards}))
                .map_err(client_err(&base))?;
            let resp = check(resp, "set")?;
            println!("{}", resp.into_body().read_to_string().unwrap_or_default());
        }
    }
    Ok(())
}
