//! Interoperability suite (issue 10): third-party git clients (dulwich,
//! pygit2 on libgit2, isomorphic-git) against a real node, each result
//! compared with what stock git gets from the same URL.
//!
//! The clients are driven by the scripts in `tests/interop/` and installed by
//! `tests/interop/install.sh` (`.ci/run` calls it) under `$GUTS_INTEROP_DIR`,
//! default `<workspace>/target/interop`. A client that is not installed prints
//! `SKIP <client>: not installed (...)` and the others still run.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::p2p::*;
use common::*;
use serde_json::Value;
use tempfile::TempDir;

const OWNER: &str = "interop";

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// Where install.sh put the clients.
fn interop_dir() -> PathBuf {
    std::env::var_os("GUTS_INTEROP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/interop"))
}

fn driver(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(file)
}

/// A third-party client, run through its driver script.
struct Client {
    name: &'static str,
    program: PathBuf,
    script: PathBuf,
    /// Protocol versions the client can list refs with.
    protocols: &'static [u8],
}

/// What one driver invocation printed.
struct Outcome {
    ok: bool,
    json: Value,
    stderr: String,
}

impl Outcome {
    fn error(&self) -> String {
        let err = self.json["error"].as_str().unwrap_or("(no error field)");
        let trace = self.json["trace"].as_str().unwrap_or("");
        let tail: Vec<&str> = self.stderr.lines().rev().take(5).collect();
        format!("{err}\n{trace}{}", tail.join("\n"))
    }

    /// The refs the client says it has (`HEAD`, `refs/remotes/*/HEAD` and
    /// peeled `^{}` entries left out).
    fn refs(&self) -> BTreeMap<String, String> {
        let mut refs: BTreeMap<String, String> =
            serde_json::from_value(self.json["refs"].clone()).unwrap_or_default();
        refs.retain(|name, _| {
            name.starts_with("refs/") && !name.ends_with("/HEAD") && !name.ends_with("^{}")
        });
        refs
    }

    /// The peeled values (`refs/tags/X^{}`) the client reports.
    fn peeled(&self) -> BTreeMap<String, String> {
        let mut refs: BTreeMap<String, String> =
            serde_json::from_value(self.json["refs"].clone()).unwrap_or_default();
        refs.retain(|name, _| name.ends_with("^{}"));
        refs
    }
}

impl Client {
    /// The client if its package is installed; otherwise prints SKIP.
    fn find(name: &str) -> Option<Client> {
        let dir = interop_dir();
        let python = dir.join("venv/bin/python");
        let (program, script, protocols, module): (PathBuf, &str, &'static [u8], &str) = match name
        {
            "dulwich" => (python, "dulwich_client.py", &[0, 2], "dulwich.porcelain"),
            "pygit2" => (python, "pygit2_client.py", &[0], "pygit2"),
            "isomorphic-git" => ("node".into(), "isogit_client.mjs", &[0, 2], ""),
            _ => panic!("unknown client {name}"),
        };
        let installed = if module.is_empty() {
            dir.join("npm/node_modules/isomorphic-git/package.json")
                .is_file()
                && Command::new("node").arg("--version").output().is_ok()
        } else {
            Command::new(&program)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !installed {
            println!("SKIP {name}: not installed (run crates/guts-node/tests/interop/install.sh)");
            return None;
        }
        let name = ["dulwich", "pygit2", "isomorphic-git"]
            .into_iter()
            .find(|n| *n == name)
            .expect("known client");
        Some(Client {
            name,
            program,
            script: driver(script),
            protocols,
        })
    }

    /// Runs one driver subcommand (bounded to 5 minutes) and parses its JSON.
    fn run(&self, args: &[&str]) -> Outcome {
        let home = git_home();
        let out = Command::new("timeout")
            .arg("300")
            .arg(&self.program)
            .arg(&self.script)
            .args(args)
            .env("GUTS_INTEROP_DIR", interop_dir())
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {} driver: {e}", self.name));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or_else(|| {
                serde_json::json!({
                    "ok": false,
                    "error": format!("no JSON from the driver ({}); stdout: {stdout}", out.status),
                })
            });
        Outcome {
            ok: json["ok"] == true && out.status.success(),
            json,
            stderr,
        }
    }

    /// Runs a step that must succeed; its JSON, or the client's error.
    fn run_ok(&self, args: &[&str]) -> Result<Outcome, String> {
        let outcome = self.run(args);
        if outcome.ok {
            Ok(outcome)
        } else {
            Err(format!(
                "{} {} failed: {}",
                self.name,
                args[0],
                outcome.error()
            ))
        }
    }
}

// ---------------------------------------------------------------------------
// Step report
// ---------------------------------------------------------------------------

/// PASS/FAIL of every step, printed as a table at the end.
#[derive(Default)]
struct Report {
    rows: Vec<(String, String, Result<(), String>)>,
}

impl Report {
    fn record(&mut self, client: &str, step: &str, result: Result<(), String>) -> bool {
        let ok = result.is_ok();
        match &result {
            Ok(()) => println!("PASS {client}: {step}"),
            Err(e) => println!("FAIL {client}: {step}: {e}"),
        }
        self.rows.push((client.into(), step.into(), result));
        ok
    }

    fn not_run(&mut self, client: &str, step: &str, why: &str) {
        println!("NOT RUN {client}: {step}: {why}");
    }

    /// Panics listing the failed steps, if any.
    fn finish(self) {
        let failed: Vec<String> = self
            .rows
            .iter()
            .filter_map(|(c, s, r)| r.as_ref().err().map(|e| format!("{c}: {s}: {e}")))
            .collect();
        println!(
            "interop: {} passed, {} failed",
            self.rows.len() - failed.len(),
            failed.len()
        );
        assert!(
            failed.is_empty(),
            "interoperability steps failed:\n{}",
            failed.join("\n\n")
        );
    }
}

/// Describes how two ref maps differ (only the differing names).
fn ref_diff(what: &str, got: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> String {
    let mut lines = Vec::new();
    for (name, id) in want {
        match got.get(name) {
            None => lines.push(format!("  missing {name} ({id})")),
            Some(g) if g != id => lines.push(format!("  {name}: {g}, expected {id}")),
            Some(_) => {}
        }
    }
    for (name, id) in got {
        if !want.contains_key(name) {
            lines.push(format!("  unexpected {name} ({id})"));
        }
    }
    lines.truncate(20);
    format!("{what} differ from stock git's:\n{}", lines.join("\n"))
}

fn check_refs(
    what: &str,
    got: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(ref_diff(what, got, want))
    }
}

// ---------------------------------------------------------------------------
// stock git helpers
// ---------------------------------------------------------------------------

/// Runs stock git, `Err` with its output on failure.
fn git_try(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = git(dir, args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "git {} in {}: {}",
            args.join(" "),
            dir.display(),
            stderr_of(&out).trim()
        ))
    }
}

/// Refs of a work tree's repository as stock git reads them, without
/// `refs/remotes/*/HEAD`.
fn stock_refs(dir: &Path) -> BTreeMap<String, String> {
    let mut refs = refs_of(dir);
    refs.retain(|name, _| !name.ends_with("/HEAD"));
    refs
}

/// `git fsck --full` on a client's repository.
fn fsck(dir: &Path) -> Result<(), String> {
    git_try(dir, &["fsck", "--full", "--no-progress"]).map(|_| ())
}

/// `HEAD`'s target, as stock git reads it.
fn symbolic_head(dir: &Path) -> Result<String, String> {
    git_try(dir, &["symbolic-ref", "HEAD"])
}

/// `git ls-remote` of the node: refname → id, peeled lines and HEAD left out.
fn ls_remote(url: &str, protocol: u8) -> BTreeMap<String, String> {
    let mut refs = ls_remote_all(url, protocol);
    refs.retain(|name, _| !name.ends_with("^{}"));
    refs
}

/// `git ls-remote` of the node with the peeled `^{}` lines, HEAD left out.
fn ls_remote_all(url: &str, protocol: u8) -> BTreeMap<String, String> {
    let tmp = std::env::temp_dir();
    let out = git_ok(
        &tmp,
        &[
            "-c",
            &format!("protocol.version={protocol}"),
            "ls-remote",
            url,
        ],
    );
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, name)| name.starts_with("refs/"))
        .map(|(id, name)| (name.to_string(), id.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// Fixture: a node with a seeded repository
// ---------------------------------------------------------------------------

/// A node serving one seeded repository, and a stock-git work clone that
/// pushes new commits to it.
struct Fixture {
    node: Node,
    tmp: TempDir,
    _data: TempDir,
    url: String,
    pusher: PathBuf,
    /// `refs/heads/...` HEAD points at.
    head: String,
    pushes: usize,
}

impl Fixture {
    /// The ripgrep fixture when present, else a small synthetic history.
    fn new() -> Fixture {
        let tmp = TempDir::new().expect("create temp dir");
        let data = TempDir::new().expect("create data dir");
        let node = Node::start_with(data.path(), &[]);
        let src = ripgrep_bare(&tmp.path().join("ripgrep-src.git"));
        let name = if src.is_some() {
            "ripgrep"
        } else {
            "synthetic"
        };
        node.create_repo(OWNER, name);
        let url = node.repo_url(OWNER, name);
        match src {
            Some(src) => {
                let specs = ["refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"];
                git_ok(&src, &[&["push", "-q", &url][..], &specs[..]].concat());
            }
            None => {
                println!("interop: seeding a synthetic history instead");
                seed_synthetic(&tmp.path().join("seed"), &url);
            }
        }
        let pusher = tmp.path().join("pusher");
        git_ok(tmp.path(), &["clone", "-q", &url, &path_str(&pusher)]);
        let head = node.server_head(OWNER, name);
        Fixture {
            node,
            tmp,
            _data: data,
            url,
            pusher,
            head,
            pushes: 0,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Pushes one more commit on HEAD's branch with stock git; returns it.
    fn advance(&mut self) -> String {
        self.pushes += 1;
        let n = self.pushes;
        let tip = commit_file(
            &self.pusher,
            &format!("interop/push-{n}.txt"),
            &format!("push {n}\n"),
            &format!("interop push {n}"),
        );
        git_ok(&self.pusher, &["push", "-q", "origin", "HEAD"]);
        let server = self.node.server_refs(OWNER, self.url_name());
        assert_eq!(server.get(&self.head), Some(&tip), "push {n} did not land");
        tip
    }

    fn url_name(&self) -> &str {
        self.url
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_suffix(".git"))
            .expect("repo url ends in NAME.git")
    }

    /// A stock-git clone of the repository (extra clone args first).
    fn stock_clone(&self, dir: &str, args: &[&str]) -> PathBuf {
        let dest = self.path(dir);
        let mut cmd = vec!["clone", "-q"];
        cmd.extend_from_slice(args);
        let dest_str = path_str(&dest);
        cmd.extend_from_slice(&[&self.url, &dest_str]);
        git_ok(self.tmp.path(), &cmd);
        dest
    }
}

/// A few commits on `main` (one in a nested directory), a second branch, a
/// lightweight and an annotated tag, pushed to `url`.
fn seed_synthetic(dir: &Path, url: &str) {
    init_work_repo(dir);
    commit_file(
        dir,
        "src/lib.rs",
        "pub fn answer() -> u32 { 42 }\n",
        "add lib",
    );
    git_ok(dir, &["tag", "v0.1"]);
    commit_file(dir, "docs/guide/intro.md", "# Intro\n", "add docs");
    git_ok(dir, &["tag", "-a", "-m", "release 0.2", "v0.2"]);
    git_ok(dir, &["checkout", "-q", "-b", "feature"]);
    commit_file(dir, "feature.txt", "feature\n", "feature work");
    git_ok(dir, &["checkout", "-q", "main"]);
    for i in 0..5 {
        commit_file(
            dir,
            "README.md",
            &format!("hello {i}\n"),
            &format!("readme {i}"),
        );
    }
    git_ok(
        dir,
        &[
            "push",
            "-q",
            url,
            "refs/heads/*:refs/heads/*",
            "refs/tags/*:refs/tags/*",
        ],
    );
}

// ---------------------------------------------------------------------------
// Fetch-side steps
// ---------------------------------------------------------------------------

/// What the client has after a clone or fetch must be what stock git has:
/// refs (its own view and stock git's reading of its directory), HEAD, and
/// `git fsck --full` must pass.
fn compare_with_stock(outcome: &Outcome, dir: &Path, stock: &Path) -> Result<(), String> {
    let want = stock_refs(stock);
    check_refs("refs the client reports", &outcome.refs(), &want)?;
    check_refs(
        "refs stock git reads in the client's repository",
        &stock_refs(dir),
        &want,
    )?;
    let head = symbolic_head(dir)?;
    let want_head = symbolic_head(stock)?;
    if head != want_head {
        return Err(format!("HEAD is {head}, stock git's clone has {want_head}"));
    }
    if let Some(h) = outcome.json["head"].as_str() {
        if h != want_head {
            return Err(format!(
                "the client reports HEAD -> {h}, expected {want_head}"
            ));
        }
    }
    fsck(dir)
}

fn step_clone(fx: &Fixture, client: &Client, dir: &Path) -> Result<(), String> {
    let outcome = client.run_ok(&["clone", &fx.url, &path_str(dir)])?;
    let stock = fx.stock_clone(&format!("{}-stock", client.name), &[]);
    compare_with_stock(&outcome, dir, &stock)
}

fn step_fetch(fx: &mut Fixture, client: &Client, dir: &Path) -> Result<(), String> {
    let tip = fx.advance();
    let stock = fx.path(&format!("{}-stock", client.name));
    git_ok(&stock, &["fetch", "-q", "origin"]);
    let outcome = client.run_ok(&["fetch", &path_str(dir)])?;
    let tracking = fx.head.replace("refs/heads/", "refs/remotes/origin/");
    if outcome.refs().get(&tracking) != Some(&tip) {
        return Err(format!(
            "after fetch the client has {tracking} = {:?}, the new tip is {tip}",
            outcome.refs().get(&tracking)
        ));
    }
    compare_with_stock(&outcome, dir, &stock)
}

/// The commits stock git walks from HEAD in a (shallow) repository.
fn history(dir: &Path) -> Result<Vec<String>, String> {
    Ok(git_try(dir, &["rev-list", "HEAD"])?
        .lines()
        .map(str::to_owned)
        .collect())
}

/// A shallow client repository must hold at least the history from HEAD
/// that stock git's shallow fetch gets, yet not the whole history (the
/// depth was honoured), with a shallow boundary in it, and pass fsck. (A
/// client may hold more: isomorphic-git wants every tag at the same depth,
/// and a tag just below HEAD extends HEAD's history.)
fn compare_shallow(
    fx: &Fixture,
    outcome: &Outcome,
    dir: &Path,
    stock: &Path,
) -> Result<(), String> {
    let (got, want) = (history(dir)?, history(stock)?);
    if let Some(missing) = want.iter().find(|c| !got.contains(c)) {
        return Err(format!(
            "history from HEAD has {} commits without {missing}, which stock git's shallow clone ({} commits) has",
            got.len(),
            want.len()
        ));
    }
    let full = history(&fx.pusher)?.len();
    if got.len() >= full {
        return Err(format!(
            "the client got all {full} commits: the depth was ignored"
        ));
    }
    if got.len() != want.len() {
        println!(
            "NOTE: history from HEAD has {} commits, stock git's shallow clone {}",
            got.len(),
            want.len()
        );
    }
    let shallow: Vec<String> =
        serde_json::from_value(outcome.json["shallow"].clone()).unwrap_or_default();
    if !shallow.iter().any(|c| got.contains(c)) {
        let on_disk = fs::read_to_string(dir.join(".git/shallow")).unwrap_or_default();
        return Err(format!(
            "no shallow commit the client reports ({shallow:?}) is in HEAD's history; .git/shallow: {on_disk:?}"
        ));
    }
    fsck(dir)
}

fn step_shallow(fx: &Fixture, client: &Client, dir: &Path) -> Result<(), String> {
    let outcome = client.run_ok(&["clone-shallow", &fx.url, &path_str(dir), "1"])?;
    let stock = fx.stock_clone(
        &format!("{}-stock-shallow", client.name),
        &["--depth", "1", "--no-single-branch"],
    );
    compare_shallow(fx, &outcome, dir, &stock)
}

fn step_deepen(fx: &Fixture, client: &Client, dir: &Path) -> Result<(), String> {
    let outcome = client.run_ok(&["deepen", &path_str(dir), "3"])?;
    let stock = fx.path(&format!("{}-stock-shallow", client.name));
    git_ok(&stock, &["fetch", "-q", "--depth", "3", "origin"]);
    if client.name == "dulwich" && dulwich_keeps_head_shallow(&outcome, dir)? {
        return fsck(dir);
    }
    compare_shallow(fx, &outcome, dir, &stock)
}

/// dulwich 1.2.21 deepens only the refs it does not already have: when
/// HEAD's parent came in with a tag at depth 1 (ripgrep tags its tips),
/// its `fetch(depth=3)` wants no branch, so HEAD stays shallow while the
/// tags deepen. `git http-backend` answers its request the same way (same
/// `unshallow` lines), so that is noted, not failed.
fn dulwich_keeps_head_shallow(outcome: &Outcome, dir: &Path) -> Result<bool, String> {
    let head = git_try(dir, &["rev-parse", "HEAD"])?;
    let shallow: Vec<String> =
        serde_json::from_value(outcome.json["shallow"].clone()).unwrap_or_default();
    if shallow.contains(&head) {
        println!(
            "NOTE dulwich: HEAD {head} stays shallow after deepen (dulwich wants no ref it has)"
        );
        return Ok(true);
    }
    Ok(false)
}

fn step_ls_refs(fx: &Fixture, client: &Client, protocol: u8) -> Result<(), String> {
    let proto = protocol.to_string();
    let outcome = client.run_ok(&["ls-refs", &fx.url, "--protocol", &proto])?;
    let stock = ls_remote_all(&fx.url, protocol);
    let mut want = stock.clone();
    want.retain(|name, _| !name.ends_with("^{}"));
    check_refs("refs listed", &outcome.refs(), &want)?;
    for (name, id) in outcome.peeled() {
        if stock.get(&name) != Some(&id) {
            return Err(format!(
                "{name} is listed as {id}, stock git lists {:?}",
                stock.get(&name)
            ));
        }
    }
    match outcome.json["symrefs"]["HEAD"].as_str() {
        Some(h) if h == fx.head => Ok(()),
        other => Err(format!(
            "HEAD is listed as {other:?}, the node's is {}",
            fx.head
        )),
    }
}

/// Every fetch-side step of one client, recorded in `report`.
fn exercise(fx: &mut Fixture, client: &Client, report: &mut Report) {
    let name = client.name;
    let dir = fx.path(&format!("{name}-clone"));
    if report.record(name, "clone", step_clone(fx, client, &dir)) {
        let result = step_fetch(fx, client, &dir);
        report.record(name, "fetch after a new push", result);
    } else {
        report.not_run(name, "fetch after a new push", "the clone failed");
    }
    let shallow = fx.path(&format!("{name}-shallow"));
    if report.record(name, "clone --depth 1", step_shallow(fx, client, &shallow)) {
        report.record(name, "deepen to 3", step_deepen(fx, client, &shallow));
    } else {
        report.not_run(name, "deepen to 3", "the shallow clone failed");
    }
    for &v in client.protocols {
        report.record(name, &format!("ls-refs v{v}"), step_ls_refs(fx, client, v));
    }
}

#[test]
fn clients_clone_fetch_deepen_and_list_refs() {
    let clients: Vec<Client> = ["dulwich", "pygit2", "isomorphic-git"]
        .into_iter()
        .filter_map(Client::find)
        .collect();
    if clients.is_empty() {
        return;
    }
    let mut fx = Fixture::new();
    let mut report = Report::default();
    for client in &clients {
        exercise(&mut fx, client, &mut report);
    }
    report.finish();
}

// ---------------------------------------------------------------------------
// Pushes with a push token
// ---------------------------------------------------------------------------
//
// `guts-node token new OWNER/NAME --refs 'refs/heads/*' --expires 30d`, run
// with the repository owner's identity (`--data-dir`/`GUTS_HOME` holding
// `identity/id_ed25519`) and `--node URL`, prints one token on stdout
// (ADR 0012). Clients send it as the HTTP Basic password with any user
// name. The node replicates to a follower, which must accept every push.

/// A data dir holding the test identity as its default key
/// (`DATA_DIR/identity/id_ed25519`), as the owner's `GUTS_HOME`.
fn owner_home() -> TempDir {
    let home = TempDir::new().expect("create owner home");
    let id = test_identity();
    let dir = home.path().join("identity");
    fs::create_dir_all(&dir).expect("create identity dir");
    let key = dir.join("id_ed25519");
    fs::copy(&id.key_path, &key).expect("copy key");
    let public = guts_identity::keys::public_key_path(&id.key_path);
    fs::copy(&public, guts_identity::keys::public_key_path(&key)).expect("copy public key");
    home
}

/// `guts-node token new OWNER/NAME --refs 'refs/heads/*' --expires 30d` as
/// the owner; the token it prints.
fn mint_token(node: &Node, owner: &str, name: &str) -> String {
    let home = owner_home();
    let out = Command::new(env!("CARGO_BIN_EXE_guts-node"))
        .args(["token", "new", &format!("{owner}/{name}")])
        .args(["--refs", "refs/heads/*", "--expires", "30d"])
        .arg("--data-dir")
        .arg(home.path())
        .args(["--node", &node.url()])
        .env("GUTS_HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .expect("run guts-node token new");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        out.status.success() && lines.len() == 1,
        "`guts-node token new {owner}/{name}` exited with {} \
         and printed {} line(s) (one token expected)\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        lines.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    lines[0].trim().to_string()
}

/// The branch the push steps create, update and delete.
const TOPIC: &str = "refs/heads/interop-topic";

/// A client's push, checked against the node: `expect_ok` says whether the
/// client must report success; either way the node's `TOPIC` (stock `git
/// ls-remote`) must be `want` afterwards, and where the client reports a
/// remote-tracking ref for it, that must agree.
fn push_step(
    client: &Client,
    url: &str,
    dir: &Path,
    refspec: &str,
    auth: Option<&str>,
    expect_ok: bool,
    want: Option<&str>,
) -> Result<(), String> {
    let dir_s = path_str(dir);
    let mut args = vec!["push", &dir_s, refspec];
    if let Some(token) = auth {
        args.extend_from_slice(&["--user", "interop", "--password", token]);
    }
    let outcome = client.run(&args);
    println!("{} push {refspec}: {}", client.name, outcome.json);
    if outcome.ok != expect_ok {
        let said = if outcome.ok { "ok" } else { "failure" };
        return Err(format!(
            "{} reported {said} for {refspec}: {}",
            client.name, outcome.json
        ));
    }
    let server = ls_remote(url, 0);
    if server.get(TOPIC).map(String::as_str) != want {
        return Err(format!(
            "after pushing {refspec} the node has {TOPIC} = {:?}, expected {want:?}",
            server.get(TOPIC)
        ));
    }
    if outcome.ok {
        check_belief(client, &outcome, want)?;
    } else {
        note_stale_tracking_ref(client, &outcome, want);
    }
    Ok(())
}

/// After a refused push a client should still track the node's value;
/// dulwich 1.2.21 records the refused one. Noted, not failed: the node did
/// its part.
fn note_stale_tracking_ref(client: &Client, outcome: &Outcome, want: Option<&str>) {
    let tracking = TOPIC.replace("refs/heads/", "refs/remotes/origin/");
    if let Some(b) = outcome.refs().get(&tracking) {
        if Some(b.as_str()) != want {
            println!(
                "NOTE {}: after a refused push it tracks {tracking} = {b}, the node has {want:?}",
                client.name
            );
        }
    }
}

/// After a successful push the client must report `TOPIC` as updated and,
/// for an update, hold the node's value in its remote-tracking ref. (After a
/// delete dulwich keeps a stale remote-tracking ref, as dulwich does with
/// any remote: that is noted, not failed.)
fn check_belief(client: &Client, outcome: &Outcome, want: Option<&str>) -> Result<(), String> {
    let status = &outcome.json["ref_status"][TOPIC];
    if !status.is_null() || outcome.json["ref_status"].get(TOPIC).is_none() {
        return Err(format!(
            "{} reports no success for {TOPIC}: {}",
            client.name, outcome.json
        ));
    }
    let tracking = TOPIC.replace("refs/heads/", "refs/remotes/origin/");
    let believed = outcome.refs().get(&tracking).cloned();
    match (want, believed.as_deref()) {
        (Some(w), b) if b != Some(w) => Err(format!(
            "{} believes {tracking} = {b:?}, the node has {w}",
            client.name
        )),
        (None, Some(b)) => {
            println!(
                "NOTE {}: {tracking} = {b} is left after the delete",
                client.name
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A repository with a small history and a stock-git work clone of it.
fn push_fixture(tmp: &Path, node: &Node) -> (String, PathBuf) {
    node.create_repo(OWNER, "pushes");
    let url = node.repo_url(OWNER, "pushes");
    let seed = tmp.join("seed");
    init_work_repo(&seed);
    commit_file(&seed, "a.txt", "a\n", "second");
    git_ok(&seed, &["push", "-q", &url, "main"]);
    let work = tmp.join("work");
    git_ok(tmp, &["clone", "-q", &url, &path_str(&work)]);
    git_ok(&work, &["checkout", "-q", "-b", "interop-topic"]);
    (url, work)
}

/// With `deny_non_fast_forwards` on, a forced non-fast-forward passes the
/// client's own check and the node refuses it (`ng` in report-status): the
/// client must report a failure and the node keep `want`.
fn forced_push_refused(
    client: &Client,
    node: &Node,
    work: &Path,
    token: &str,
    want: &str,
) -> Result<(), String> {
    let path = format!("/api/v1/repos/{OWNER}/pushes");
    let deny = |on: bool| {
        let resp = node.patch_json(&path, &serde_json::json!({ "deny_non_fast_forwards": on }));
        assert_eq!(resp.status, 200, "PATCH {path}: {}", resp.text());
    };
    deny(true);
    let url = node.repo_url(OWNER, "pushes");
    let forced = format!("+{TOPIC}:{TOPIC}");
    let result = push_step(client, &url, work, &forced, Some(token), false, Some(want));
    deny(false);
    result
}

/// No token and a wrong one, then a good one: create, fast-forward, a
/// non-fast-forward the client rejects, a forced one the node rejects,
/// delete; each checked against `git ls-remote`.
fn pushes_with_a_token(name: &str) {
    let Some(client) = Client::find(name) else {
        return;
    };
    let tmp = TempDir::new().expect("create temp dir");
    let node = peer_node(&tmp.path().join("a"), None, true);
    let (url, work) = push_fixture(tmp.path(), &node);
    let follower = follower_of(&node, &tmp.path().join("b"));
    let spec = format!("{TOPIC}:{TOPIC}");
    let first = commit_file(&work, "topic.txt", "one\n", "topic one");
    let mut report = Report::default();
    let step = push_step(&client, &url, &work, &spec, None, false, None);
    report.record(name, "push without a token is refused", step);
    let step = push_step(
        &client,
        &url,
        &work,
        &spec,
        Some("not-a-token"),
        false,
        None,
    );
    report.record(name, "push with a wrong token is refused", step);

    let token = mint_token(&node, OWNER, "pushes");
    let step = push_step(
        &client,
        &url,
        &work,
        &spec,
        Some(&token),
        true,
        Some(&first),
    );
    report.record(name, "push a new branch", step);
    let second = commit_file(&work, "topic.txt", "two\n", "topic two");
    let step = push_step(
        &client,
        &url,
        &work,
        &spec,
        Some(&token),
        true,
        Some(&second),
    );
    report.record(name, "fast-forward", step);
    git_ok(&work, &["reset", "-q", "--hard", &first]);
    commit_file(&work, "topic.txt", "diverged\n", "topic diverged");
    let step = push_step(
        &client,
        &url,
        &work,
        &spec,
        Some(&token),
        false,
        Some(&second),
    );
    report.record(name, "non-fast-forward is rejected", step);
    let step = forced_push_refused(&client, &node, &work, &token, &second);
    report.record(name, "forced push the node refuses is reported", step);
    let delete = format!(":{TOPIC}");
    let step = push_step(&client, &url, &work, &delete, Some(&token), true, None);
    report.record(name, "delete the branch", step);
    let step = replicated(&node, &follower);
    report.record(name, "a second node accepts the token pushes", step);
    report.finish();
}

/// A node that seeds `OWNER/pushes` from `a`, with its refs.
fn follower_of(a: &Node, dir: &Path) -> Node {
    let b = peer_node(dir, Some(&p2p_addr(a)), true);
    let owner = test_identity().owner_id();
    eventually(20, "the follower connects", || !connected(&b).is_empty());
    seed(&b, &owner, "pushes");
    eventually(20, "the follower has the refs", || {
        same_refs(a, &b, &owner, "pushes")
    });
    b
}

/// The follower ends with the same refs and the same log as `a`, the
/// token pushes included (each verified there through its grant).
fn replicated(a: &Node, b: &Node) -> Result<(), String> {
    let owner = test_identity().owner_id();
    let certificates = |n: &Node| -> Vec<String> {
        updates(n, &owner, "pushes")
            .iter()
            .map(|u| u["certificate"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while certificates(a) != certificates(b)
        || a.server_refs(&owner, "pushes") != b.server_refs(&owner, "pushes")
    {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the follower has {} of {} updates; refs {:?} vs {:?}",
                certificates(b).len(),
                certificates(a).len(),
                b.server_refs(&owner, "pushes"),
                a.server_refs(&owner, "pushes")
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let granted = updates(b, &owner, "pushes")
        .iter()
        .filter(|u| !u["grant"].is_null())
        .count();
    if granted < 3 {
        return Err(format!(
            "the follower logged {granted} token pushes, expected 3"
        ));
    }
    Ok(())
}

#[test]
fn dulwich_pushes_with_a_token() {
    pushes_with_a_token("dulwich");
}

#[test]
fn pygit2_pushes_with_a_token() {
    pushes_with_a_token("pygit2");
}

#[test]
fn isomorphic_git_pushes_with_a_token() {
    pushes_with_a_token("isomorphic-git");
}
