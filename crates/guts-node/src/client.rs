//! The client-side subcommands: `id`, `git-setup` and `repo ...` (the latter
//! talk to a running node over its REST API).

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use guts_identity::{Did, Doc, DocumentBody, Keypair, Verified};
use prost::Message;

use crate::config::{default_data_dir, DEFAULT_HTTP_LISTEN};
use crate::error::NodeError;
use crate::rest::{IdentityView, RepoDetail, RepoSummary};
use crate::{ClientArgs, DelegateAction, DelegateChange, IdAction, RepoAction};

pub(crate) fn node_url(args: &ClientArgs) -> String {
    if let Some(n) = &args.node {
        return n.trim_end_matches('/').to_owned();
    }
    let dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    match std::fs::read_to_string(dir.join("http.addr")) {
        Ok(addr) => format!("http://{}", addr.trim()),
        Err(_) => format!("http://{DEFAULT_HTTP_LISTEN}"),
    }
}

pub(crate) fn key_path(args: &ClientArgs) -> PathBuf {
    args.key.clone().unwrap_or_else(|| {
        args.data_dir
            .clone()
            .unwrap_or_else(default_data_dir)
            .join("identity")
            .join("id_ed25519")
    })
}

pub(crate) fn load_key(path: &Path) -> Result<Keypair, NodeError> {
    if !path.exists() {
        return Err(NodeError::Client(format!(
            "no identity key at {}: create one with `guts-node id new` (or pass --key)",
            path.display()
        )));
    }
    Keypair::read_openssh(path).map_err(|e| NodeError::Client(e.to_string()))
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

pub(crate) fn check(
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

pub(crate) fn unreachable_node(url: &str) -> impl Fn(ureq::Error) -> NodeError + '_ {
    move |e| {
        NodeError::Client(format!(
            "cannot reach the node at {url}: {e} (is `guts-node run` running? see --node)"
        ))
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    resp: ureq::http::Response<ureq::Body>,
) -> Result<T, NodeError> {
    resp.into_body()
        .read_json()
        .map_err(|e| NodeError::Client(format!("bad response from the node: {e}")))
}

/// `guts-node id ...`
pub fn id_command(action: IdAction, args: &ClientArgs) -> Result<(), NodeError> {
    let path = key_path(args);
    match action {
        IdAction::New => {
            let key = Keypair::generate().map_err(|e| NodeError::Client(e.to_string()))?;
            key.write_openssh(&path, &key.did().to_string())
                .map_err(|e| NodeError::Client(e.to_string()))?;
            println!("{}", key.did());
            eprintln!(
                "key written to {} (and {}.pub)",
                path.display(),
                path.display()
            );
            eprintln!("next: `guts-node git-setup` so that git signs your pushes with it");
        }
        IdAction::Show => {
            let key = load_key(&path)?;
            println!("did        {}", key.did());
            println!("owner id   {}", key.did().method_id());
            println!("key file   {}", path.display());
            println!(
                "public key {}",
                key.ssh_public_key("")
                    .map_err(|e| NodeError::Client(e.to_string()))?
                    .trim()
            );
        }
    }
    Ok(())
}

pub(crate) fn git_config(repo: Option<&Path>, key: &str, value: &str) -> Result<(), NodeError> {
    let mut cmd = Process::new("git");
    match repo {
        Some(r) => cmd.arg("-C").arg(r).arg("config"),
        None => cmd.arg("config").arg("--global"),
    };
    let status = cmd
        .arg(key)
        .arg(value)
        .status()
        .map_err(|e| NodeError::Client(format!("cannot run git: {e}")))?;
    if !status.success() {
        return Err(NodeError::Client(format!("git config {key} failed")));
    }
    Ok(())
}

/// `guts-node git-setup`: make git sign pushes with the Guts key.
pub fn git_setup(
    repo: Option<&Path>,
    remote_url: Option<&str>,
    remote_name: &str,
    args: &ClientArgs,
) -> Result<(), NodeError> {
    let path = key_path(args);
    let key = load_key(&path)?;
    let abs = std::fs::canonicalize(&path)?;
    let abs = abs.to_string_lossy();
    git_config(repo, "gpg.format", "ssh")?;
    git_config(repo, "user.signingkey", &abs)?;
    git_config(repo, "push.gpgSign", "if-asked")?;
    if let (Some(repo), Some(url)) = (repo, remote_url) {
        let has_remote = Process::new("git")
            .arg("-C")
            .arg(repo)
            .args(["remote", "get-url", remote_name])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        let verb = if has_remote { "set-url" } else { "add" };
        let status = Process::new("git")
            .arg("-C")
            .arg(repo)
            .args(["remote", verb, remote_name, url])
            .status()
            .map_err(|e| NodeError::Client(format!("cannot run git: {e}")))?;
        if !status.success() {
            return Err(NodeError::Client(format!("git remote {verb} failed")));
        }
    }
    let scope = repo.map_or("your global git config".to_owned(), |r| {
        format!("{}", r.display())
    });
    println!(
        "configured {scope}: pushes to Guts nodes are signed by {}",
        key.did()
    );
    Ok(())
}

/// Fetch a repository's document chain and verify it locally (no trust in the node).
pub(crate) fn fetch_identity(
    base: &str,
    repo: &str,
) -> Result<(IdentityView, Doc<Verified>), NodeError> {
    let url = format!("{base}/api/v1/repos/{repo}/identity");
    let view: IdentityView = read_json(check(
        agent().get(&url).call().map_err(unreachable_node(base))?,
        "identity",
    )?)?;
    let mut doc: Option<Doc<Verified>> = None;
    for v in &view.versions {
        let bytes = B64
            .decode(v)
            .map_err(|e| NodeError::Client(format!("bad document from the node: {e}")))?;
        let d = Doc::from_bytes(&bytes).map_err(|e| NodeError::Client(e.to_string()))?;
        let verified = match &doc {
            None => d.verify_genesis(),
            Some(prev) => d.verify_successor(prev),
        }
        .map_err(|e| {
            NodeError::Client(format!("the node's document chain does not verify: {e}"))
        })?;
        doc = Some(verified);
    }
    let doc =
        doc.ok_or_else(|| NodeError::Client("the node returned no identity document".into()))?;
    Ok((view, doc))
}

/// Sign `next` with your key and each `cosign` key file, and send it as
/// `repo`'s next identity document version.
pub(crate) fn publish_document(
    base: &str,
    args: &ClientArgs,
    repo: &str,
    next: &DocumentBody,
    cosign: &[PathBuf],
) -> Result<IdentityView, NodeError> {
    let mut keys = vec![load_key(&key_path(args))?];
    for path in cosign {
        keys.push(load_key(path)?);
    }
    let refs: Vec<&Keypair> = keys.iter().collect();
    let signed = next.sign(&refs);
    let url = format!("{base}/api/v1/repos/{repo}/identity");
    let resp = agent()
        .put(&url)
        .send_json(serde_json::json!({ "document": B64.encode(signed.encode_to_vec()) }))
        .map_err(unreachable_node(base))?;
    read_json(check(resp, "identity update")?)
}

fn change_delegates(
    base: &str,
    args: &ClientArgs,
    action: DelegateAction,
) -> Result<(), NodeError> {
    let (add, change) = match action {
        DelegateAction::Add(c) => (true, c),
        DelegateAction::Remove(c) => (false, c),
    };
    let DelegateChange {
        repo,
        did,
        threshold,
        cosign,
    } = change;
    let repo = repo.as_str();
    let did = Did::parse_any(&did)
        .map_err(|e| NodeError::Client(e.to_string()))?
        .to_string();
    let (_, current) = fetch_identity(base, repo)?;
    let mut next: DocumentBody = current.successor();
    if add {
        if next.delegates.contains(&did) {
            return Err(NodeError::Client(format!("{did} is already a delegate")));
        }
        next.delegates.push(did.clone());
    } else {
        if !next.delegates.contains(&did) {
            return Err(NodeError::Client(format!("{did} is not a delegate")));
        }
        next.delegates.retain(|d| *d != did);
        next.threshold = next.threshold.min(next.delegates.len() as u32);
    }
    if let Some(t) = threshold {
        next.threshold = t;
    }
    let view = publish_document(base, args, repo, &next, &cosign)?;
    println!(
        "{repo}: identity document version {} with {} delegate(s), threshold {}",
        view.version,
        view.delegates.len(),
        view.threshold
    );
    Ok(())
}

/// `guts-node repo ...`: one REST call (or a signed document update) per subcommand.
pub fn repo_command(action: RepoAction, args: &ClientArgs) -> Result<(), NodeError> {
    let base = node_url(args);
    let agent = agent();
    match action {
        RepoAction::Create {
            name,
            aliases,
            default_branch,
        } => create_repo(&base, &agent, args, name, aliases, &default_branch),
        RepoAction::Delegates { action } => change_delegates(&base, args, action),
        RepoAction::List => list_repos(&base, &agent),
        RepoAction::Show { name } => show_repo(&base, &agent, &name),
        RepoAction::Delete { name } => delete_repo(&base, &agent, args, &name),
        RepoAction::Maintain { name } => maintain_repo(&base, &agent, args, &name),
        RepoAction::Set {
            name,
            deny_non_fast_forwards,
        } => set_repo(&base, &agent, args, &name, deny_non_fast_forwards),
    }
}

/// `repo create`: sign a genesis document with the local key and post it.
/// An `owner/` prefix other than the key's own id becomes an alias.
fn create_repo(
    base: &str,
    agent: &ureq::Agent,
    args: &ClientArgs,
    name: String,
    mut aliases: Vec<String>,
    default_branch: &str,
) -> Result<(), NodeError> {
    let key = load_key(&key_path(args))?;
    let did = key.did();
    let name = match name.split_once('/') {
        Some((owner, n)) => {
            if owner != did.method_id() && !aliases.iter().any(|a| a == owner) {
                aliases.push(owner.to_owned());
            }
            n.to_owned()
        }
        None => name,
    };
    let signed = DocumentBody::genesis(did, &name, default_branch, aliases).sign(&[&key]);
    let resp = agent
        .post(&format!("{base}/api/v1/repos"))
        .send_json(serde_json::json!({ "document": B64.encode(signed.encode_to_vec()) }))
        .map_err(unreachable_node(base))?;
    let created: RepoSummary = read_json(check(resp, "create")?)?;
    println!(
        "created {}/{} (id {})",
        created.owner,
        created.name,
        created.id.unwrap_or_default()
    );
    println!("  git remote add origin {base}{}", created.path);
    for a in created.aliases {
        println!("  also at {base}/{a}/{}.git", created.name);
    }
    Ok(())
}

/// `repo list`: one line per repository with its clone URL and aliases.
/// `repo list`: every page of the node's listing.
fn list_repos(base: &str, agent: &ureq::Agent) -> Result<(), NodeError> {
    let mut next = Some("/api/v1/repos".to_owned());
    while let Some(path) = next.take() {
        let resp = check(
            agent
                .get(&format!("{base}{path}"))
                .call()
                .map_err(unreachable_node(base))?,
            "list",
        )?;
        next = resp
            .headers()
            .get("link")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.strip_prefix('<'))
            .and_then(|l| l.split_once('>'))
            .map(|(p, _)| p.to_owned());
        let repos: Vec<RepoSummary> = read_json(resp)?;
        for r in repos {
            let aliases = if r.aliases.is_empty() {
                String::new()
            } else {
                format!(" (aliases: {})", r.aliases.join(", "))
            };
            println!("{}/{}\t{base}{}{aliases}", r.owner, r.name, r.path);
        }
    }
    Ok(())
}

/// `repo show`: the repository's identity, size, settings and refs.
fn show_repo(base: &str, agent: &ureq::Agent, name: &str) -> Result<(), NodeError> {
    let resp = check(
        agent
            .get(&format!("{base}/api/v1/repos/{name}"))
            .call()
            .map_err(unreachable_node(base))?,
        "show",
    )?;
    let d: RepoDetail = read_json(resp)?;
    println!("repository  {}/{}", d.owner, d.name);
    println!("id          {}", d.id.unwrap_or_default());
    println!("url         {base}/{}/{}.git", d.owner, d.name);
    println!("owner       {}", d.owner_did.unwrap_or_default());
    println!("aliases     {}", d.aliases.join(", "));
    println!(
        "delegates   {} (threshold {}, document v{})",
        d.delegates.join(", "),
        d.threshold,
        d.doc_version
    );
    println!("HEAD        {}", d.head);
    println!("objects     {}", d.object_count);
    println!("size        {} bytes", d.size_bytes);
    println!("packs       {}", d.packs);
    match d.maintained_at {
        Some(at) => println!("maintained  {at} (seconds since the epoch)"),
        None => println!("maintained  never"),
    }
    println!("deny non-fast-forwards  {}", d.deny_non_fast_forwards);
    for (r, id) in d.refs {
        println!("{id} {r}");
    }
    Ok(())
}

/// The operator token of the node whose data dir the CLI uses, if readable.
fn operator_token(args: &ClientArgs) -> Option<String> {
    let dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::read_to_string(crate::auth::OperatorToken::path(&dir))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// `Authorization` for an operator-only request.
pub(crate) fn operator_auth(args: &ClientArgs) -> Result<String, NodeError> {
    operator_token(args).map(|t| format!("Bearer {t}")).ok_or_else(|| {
        NodeError::Client(
            "this needs the node's operator token (DATA_DIR/operator.token of the node; pass --data-dir)"
                .into(),
        )
    })
}

/// `Authorization` for a repository action: the operator token when this
/// machine has it, else `action` signed with your key over a fresh nonce.
fn repo_auth(
    base: &str,
    agent: &ureq::Agent,
    args: &ClientArgs,
    name: &str,
    action: &str,
) -> Result<String, NodeError> {
    if let Some(t) = operator_token(args) {
        return Ok(format!("Bearer {t}"));
    }
    let key = load_key(&key_path(args))?;
    let resp = agent
        .get(&format!("{base}/api/v1/repos/{name}/nonce"))
        .call()
        .map_err(unreachable_node(base))?;
    let v: serde_json::Value = read_json(check(resp, "nonce")?)?;
    let field = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let id: guts_identity::RepoId = field("id")
        .parse()
        .map_err(|e: guts_identity::Error| NodeError::Client(e.to_string()))?;
    let signed = guts_identity::RepoAction {
        repo_id: id.0.to_vec(),
        action: action.to_owned(),
        nonce: field("nonce"),
    }
    .sign(&[&key]);
    Ok(format!("GutsAction {}", B64.encode(signed.encode_to_vec())))
}

/// `repo delete`.
fn delete_repo(
    base: &str,
    agent: &ureq::Agent,
    args: &ClientArgs,
    name: &str,
) -> Result<(), NodeError> {
    let auth = repo_auth(base, agent, args, name, "delete")?;
    check(
        agent
            .delete(&format!("{base}/api/v1/repos/{name}"))
            .header("Authorization", &auth)
            .call()
            .map_err(unreachable_node(base))?,
        "delete",
    )?;
    println!("deleted {name}");
    Ok(())
}

/// `repo maintain`: ask the node to consolidate packs and write indexes;
/// prints what the run did when it is done.
fn maintain_repo(
    base: &str,
    agent: &ureq::Agent,
    args: &ClientArgs,
    name: &str,
) -> Result<(), NodeError> {
    let auth = operator_auth(args)?;
    eprintln!("maintaining {name} (consolidating packs, writing the commit-graph)...");
    let (accept, ndjson) = crate::cli_progress::accept();
    let resp = agent
        .post(&format!("{base}/api/v1/repos/{name}/maintain"))
        .header("Authorization", &auth)
        .header(accept, ndjson)
        .send_empty()
        .map_err(unreachable_node(base))?;
    let r: guts_git::storage::MaintainReport = crate::cli_progress::follow(resp, "maintain")?;
    if r.up_to_date {
        println!("{name}: already maintained ({} packs)", r.packs_after);
        return Ok(());
    }
    println!(
        "{name}: {} packs -> {}; {} reachable objects, {} other objects kept; {} commits in the commit-graph; {} bytes of packs; {:.1} s",
        r.packs_before,
        r.packs_after,
        r.reachable_objects,
        r.cruft_objects,
        r.commits,
        r.pack_bytes,
        r.millis as f64 / 1000.0
    );
    Ok(())
}

/// `repo set`: change a repository setting; prints the node's answer.
fn set_repo(
    base: &str,
    agent: &ureq::Agent,
    args: &ClientArgs,
    name: &str,
    deny_non_fast_forwards: Option<bool>,
) -> Result<(), NodeError> {
    let action = crate::rest::settings_action(deny_non_fast_forwards);
    let auth = repo_auth(base, agent, args, name, &action)?;
    let resp = agent
        .patch(&format!("{base}/api/v1/repos/{name}"))
        .header("Authorization", &auth)
        .send_json(serde_json::json!({"deny_non_fast_forwards": deny_non_fast_forwards}))
        .map_err(unreachable_node(base))?;
    let resp = check(resp, "set")?;
    println!("{}", resp.into_body().read_to_string().unwrap_or_default());
    Ok(())
}
