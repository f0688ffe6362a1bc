//! Crash consistency, end to end: the node is killed with SIGKILL at random
//! moments during signed pushes and restarted on the same data each time.
//! After every restart, every ref that moved has its signed update in the
//! log, the log replays to the refs, an acknowledged push is still there and
//! the refs' objects can be fetched; every few restarts (and at the end) a
//! fresh clone passes `git fsck --full`. At the end a second node replicates
//! the repository and must end with the same refs and the same log.
//!
//! Pushes are hand-made signed receive-pack requests (as in
//! `robustness.rs`), each with a fresh nonce, from one pusher in sequence,
//! always from the node's current refs. Every pushed value is a fresh commit
//! (deletions aside), so no ref ever returns to a value it had: the log of a
//! ref must then replay, in log order, as one chain from the zero id.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::p2p::*;
use common::*;
use tempfile::TempDir;

const NAME: &str = "crash";
const MAIN: &str = "refs/heads/main";
const SIDE: &str = "refs/heads/side";
/// Kill-and-restart rounds (the issue asks for at least 50; a round takes
/// about a quarter of a second).
const ITERATIONS: usize = 120;
/// Seed of the generator that picks the pushes, their sizes and the kill delays.
const SEED: u64 = 0x6775_7473_2d63_7261;
/// Kill delays are drawn from `[0, KILL_SPREAD × measured push duration]`.
const KILL_SPREAD: f64 = 1.3;
/// A fresh clone is checked with `git fsck --full` every this many rounds.
const FSCK_EVERY: usize = 10;

/// The pusher's bare repository, where commits are made with plumbing.
struct Work {
    dir: PathBuf,
    made: u64,
}

impl Work {
    fn new(dir: PathBuf) -> Work {
        std::fs::create_dir_all(&dir).expect("create work dir");
        git_ok(&dir, &["init", "-q", "--bare"]);
        Work { dir, made: 0 }
    }

    /// A new commit on `parent` whose only file is `size` random bytes.
    fn commit(&mut self, parent: Option<&str>, size: usize, rng: &mut Rng) -> String {
        self.made += 1;
        let out = git_stdin(
            &self.dir,
            &["hash-object", "-w", "--stdin"],
            &rng.noise(size),
        );
        let blob = stdout_ok(&self.dir, "hash-object", &out);
        let entry = format!("100644 blob {blob}\tdata.bin\n");
        let out = git_stdin(&self.dir, &["mktree"], entry.as_bytes());
        let tree = stdout_ok(&self.dir, "mktree", &out);
        let msg = format!("commit {}", self.made);
        let mut args = vec!["commit-tree", tree.as_str(), "-m", msg.as_str()];
        if let Some(p) = parent {
            args.extend(["-p", p]);
        }
        let date = format!("{} +0000", 1_700_000_000 + self.made);
        let out = git_env(
            &self.dir,
            &args,
            &[("GIT_AUTHOR_DATE", &date), ("GIT_COMMITTER_DATE", &date)],
        );
        stdout_ok(&self.dir, "commit-tree", &out)
    }

    /// `id~2`, or `id~1` if the history is not that deep.
    fn older(&self, id: &str) -> String {
        let out = git(
            &self.dir,
            &["rev-parse", "--verify", "-q", &format!("{id}~2")],
        );
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        rev_parse(&self.dir, &format!("{id}~1"))
    }

    /// A pack of what `tips` need beyond what the node's `refs` hold.
    fn pack(&self, tips: &[&str], refs: &BTreeMap<String, String>) -> Vec<u8> {
        let haves: Vec<String> = refs.values().map(|v| format!("^{v}")).collect();
        let revs: Vec<&str> = tips
            .iter()
            .copied()
            .chain(haves.iter().map(String::as_str))
            .collect();
        pack_objects(&self.dir, &revs, false)
    }
}

fn stdout_ok(dir: &Path, what: &str, out: &std::process::Output) -> String {
    assert_success(dir, &[what], out);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One signed push: what it does and what the node holds if it succeeds.
struct Push {
    kind: &'static str,
    commands: Vec<String>,
    caps: String,
    pack: Vec<u8>,
    /// Each ref it updates and the value it sets (`None`: deleted).
    sets: BTreeMap<String, Option<String>>,
}

impl Push {
    fn new(kind: &'static str) -> Push {
        Push {
            kind,
            commands: Vec::new(),
            caps: "report-status delete-refs".to_owned(),
            pack: Vec::new(),
            sets: BTreeMap::new(),
        }
    }

    fn command(&mut self, name: &str, old: Option<&str>, new: Option<&str>) {
        let old = old.unwrap_or(ZERO_ID);
        self.commands
            .push(format!("{old} {} {name}", new.unwrap_or(ZERO_ID)));
        self.sets.insert(name.to_owned(), new.map(str::to_owned));
    }
}

/// The next push, from the node's current `refs`: mostly fast-forwards of
/// main, some rewrites of main onto an older commit, creations and
/// deletions of a second branch, and two-ref pushes (some atomic).
fn plan(work: &mut Work, rng: &mut Rng, refs: &BTreeMap<String, String>) -> Push {
    let main = refs.get(MAIN).expect("main exists").clone();
    let side = refs.get(SIDE).cloned();
    let size = (100 << 10) + rng.below(300 << 10) as usize;
    let roll = rng.below(100);
    let mut push;
    let mut tips = Vec::new();
    if roll < 55 {
        push = Push::new("fast-forward");
        let new = work.commit(Some(&main), size, rng);
        push.command(MAIN, Some(main.as_str()), Some(&new));
        tips.push(new);
    } else if roll < 67 {
        push = Push::new("force");
        let base = work.older(&main);
        let new = work.commit(Some(&base), size, rng);
        push.command(MAIN, Some(main.as_str()), Some(&new));
        tips.push(new);
    } else if roll < 80 {
        if let Some(side) = side {
            push = Push::new("delete side");
            push.command(SIDE, Some(side.as_str()), None);
        } else {
            push = Push::new("create side");
            let new = work.commit(Some(&main), size, rng);
            push.command(SIDE, None, Some(&new));
            tips.push(new);
        }
    } else {
        let atomic = rng.below(2) == 0;
        push = Push::new(if atomic {
            "two refs, atomic"
        } else {
            "two refs"
        });
        if atomic {
            push.caps.push_str(" atomic");
        }
        let new_main = work.commit(Some(&main), size / 2, rng);
        let base = side.as_deref().unwrap_or(&new_main).to_owned();
        let new_side = work.commit(Some(&base), size / 2, rng);
        push.command(MAIN, Some(&main), Some(&new_main));
        push.command(SIDE, side.as_deref(), Some(&new_side));
        tips.extend([new_main, new_side]);
    }
    if !tips.is_empty() {
        let tips: Vec<&str> = tips.iter().map(String::as_str).collect();
        push.pack = work.pack(&tips, refs);
    }
    push
}

/// A push on its way: the request runs on a thread so the node can be
/// killed at any moment of it.
struct InFlight {
    certificate: String,
    started: Instant,
    thread: JoinHandle<(Result<HttpResponse, String>, Instant)>,
}

fn send(node: &Node, owner: &str, push: &Push) -> InFlight {
    let nonce = node
        .push_cert_nonce(owner, NAME)
        .expect("receive-pack advertises a push-cert nonce");
    let url = node.repo_url(owner, NAME);
    let certificate = push_certificate(test_identity(), &url, &nonce, &push.commands);
    let body = signed_receive_pack_body(&certificate, &push.caps, &push.pack);
    let addr = node.addr().to_owned();
    let path = format!("/{owner}/{NAME}.git/git-receive-pack");
    let started = Instant::now();
    let thread = std::thread::spawn(move || {
        let headers = [
            ("Content-Type", "application/x-git-receive-pack-request"),
            ("Accept", "application/x-git-receive-pack-result"),
        ];
        let answer = try_http_request(&addr, "POST", &path, &headers, &body);
        (answer, Instant::now())
    });
    InFlight {
        certificate,
        started,
        thread,
    }
}

/// The `ok`/`ng` lines of a complete report-status answer (no side band):
/// ref → `None` if ok, else the reason. `None` if the answer is not one.
fn report(resp: &HttpResponse) -> Option<BTreeMap<String, Option<String>>> {
    if resp.status != 200 {
        return None;
    }
    let mut body = &resp.body[..];
    let mut lines = Vec::new();
    loop {
        let len = usize::from_str_radix(std::str::from_utf8(body.get(..4)?).ok()?, 16).ok()?;
        if len == 0 {
            break;
        }
        lines.push(
            String::from_utf8_lossy(body.get(4..len)?)
                .trim_end()
                .to_owned(),
        );
        body = &body[len..];
    }
    if lines.first().map(String::as_str) != Some("unpack ok") {
        return None;
    }
    lines[1..]
        .iter()
        .map(|l| match l.split_once(' ')? {
            ("ok", name) => Some((name.to_owned(), None)),
            ("ng", rest) => {
                let (name, why) = rest.split_once(' ').unwrap_or((rest, ""));
                Some((name.to_owned(), Some(why.to_owned())))
            }
            _ => None,
        })
        .collect()
}

/// One entry of the signed-update log, as the REST API lists it.
struct Entry {
    seq: u64,
    /// `(old, new, ref)` of each line of the certificate.
    lines: Vec<(String, String, String)>,
    refused: Vec<String>,
    superseded: Vec<String>,
    certificate: String,
}

fn log_of(node: &Node, owner: &str) -> Vec<Entry> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|s| s.as_str().expect("string").to_owned())
            .collect()
    };
    updates(node, owner, NAME)
        .iter()
        .map(|u| Entry {
            seq: u["seq"].as_u64().expect("seq"),
            lines: strings(&u["updates"])
                .iter()
                .map(|l| {
                    let mut w = l.split(' ').map(str::to_owned);
                    let mut next = || w.next().unwrap_or_else(|| panic!("bad line {l:?}"));
                    (next(), next(), next())
                })
                .collect(),
            refused: strings(&u["refused"]),
            superseded: strings(&u["superseded"]),
            certificate: u["certificate"].as_str().expect("certificate").to_owned(),
        })
        .collect()
}

/// Replays the log for `name` from the zero id in log order, over the
/// effective lines (not refused; with `winners_only`, not superseded
/// either): the value it ends at, or the first line that does not follow.
fn replay(log: &[Entry], name: &str, winners_only: bool) -> Result<String, String> {
    let mut value = ZERO_ID.to_owned();
    for e in log {
        if e.refused.iter().any(|r| r == name)
            || (winners_only && e.superseded.iter().any(|r| r == name))
        {
            continue;
        }
        for (old, new, _) in e.lines.iter().filter(|(_, _, n)| n == name) {
            if *old != value {
                return Err(format!(
                    "log entry {}: `{old} {new} {name}` does not follow {value}",
                    e.seq
                ));
            }
            value = new.clone();
        }
    }
    Ok(value)
}

/// The invariants between the node's refs and its signed-update log.
fn check_log(refs: &BTreeMap<String, String>, log: &[Entry]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, value) in refs {
        let logged = log.iter().any(|e| {
            !e.refused.contains(name) && e.lines.iter().any(|(_, new, n)| n == name && new == value)
        });
        if !logged {
            problems.push(format!(
                "{name} is at {value} but no signed update in the log sets it"
            ));
        }
    }
    let mut names: BTreeSet<&str> = refs.keys().map(String::as_str).collect();
    names.extend(
        log.iter()
            .flat_map(|e| e.lines.iter().map(|(_, _, n)| n.as_str())),
    );
    for name in names {
        let actual = refs.get(name).map_or(ZERO_ID, String::as_str);
        for (winners_only, what) in [(false, "the log"), (true, "the winning lines of the log")] {
            match replay(log, name, winners_only) {
                Ok(v) if v == actual => {}
                Ok(v) => problems.push(format!(
                    "replaying {what} gives {name} = {v}, but the ref is {actual}"
                )),
                Err(e) => problems.push(format!("replaying {what}: {e}")),
            }
        }
    }
    let certificates: BTreeSet<&str> = log.iter().map(|e| e.certificate.as_str()).collect();
    if certificates.len() != log.len() {
        problems.push(format!(
            "the log holds {} entries but only {} distinct certificates",
            log.len(),
            certificates.len()
        ));
    }
    problems
}

/// What the test knows about the node between rounds.
struct Harness {
    tmp: TempDir,
    data: PathBuf,
    owner: String,
    work: Work,
    /// A bare repository fetching every ref of the node after each restart.
    mirror: PathBuf,
    rng: Rng,
    /// Each violation found (deduplicated), with the first round that found it.
    violations: Vec<(usize, String)>,
}

impl Harness {
    fn new() -> Harness {
        let tmp = TempDir::new().expect("tmp");
        let data = tmp.path().join("node1");
        let work = Work::new(tmp.path().join("work.git"));
        let mirror = tmp.path().join("mirror.git");
        std::fs::create_dir_all(&mirror).expect("create mirror");
        git_ok(&mirror, &["init", "-q", "--bare"]);
        Harness {
            tmp,
            data,
            owner: test_identity().owner_id(),
            work,
            mirror,
            rng: Rng(SEED),
            violations: Vec::new(),
        }
    }

    /// Node 1, with replication on (no peers until node 2 comes), as a node
    /// in a network runs: after each push it also settles the pushed refs by
    /// the conflict rule over its log.
    fn start(&self) -> Node {
        peer_node(&self.data, None, false)
    }

    fn violation(&mut self, round: usize, what: String) {
        if !self.violations.iter().any(|(_, v)| *v == what) {
            println!("round {round}: VIOLATION: {what}");
            self.violations.push((round, what));
        }
    }

    /// Quarantine directories (`objects/incoming-*`) of the repository.
    fn quarantines(&self) -> Vec<String> {
        let objects = self
            .data
            .join(format!("repos/{}/{NAME}.git/objects", self.owner));
        std::fs::read_dir(objects)
            .expect("objects dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("incoming-"))
            .collect()
    }

    /// Everything checked after a restart; `acked` is the push the node
    /// answered `ok` to before it was killed, with its certificate.
    fn check(&mut self, node: &Node, round: usize, acked: Option<(&Push, &str)>) {
        let refs = node.server_refs(&self.owner, NAME);
        let log = log_of(node, &self.owner);
        let mut problems = check_log(&refs, &log);
        if let Some((push, certificate)) = acked {
            for (name, value) in &push.sets {
                if refs.get(name) != value.as_ref() {
                    problems.push(format!(
                        "an acknowledged push was lost: {name} is {:?}, the push set {value:?}",
                        refs.get(name)
                    ));
                }
            }
            if !log.iter().any(|e| e.certificate == certificate) {
                problems.push("an acknowledged push is not in the log".to_owned());
            }
        }
        let left = self.quarantines();
        if !left.is_empty() {
            problems.push(format!("quarantine left behind after restart: {left:?}"));
        }
        if let Err(e) = self.fetch(node, &refs) {
            problems.push(e);
        }
        for p in problems {
            self.violation(round, p);
        }
    }

    /// Fetches every ref of the node into the mirror (git checks that the
    /// objects it receives connect) and compares the refs with the REST API's.
    fn fetch(&self, node: &Node, refs: &BTreeMap<String, String>) -> Result<(), String> {
        let url = node.repo_url(&self.owner, NAME);
        let args = ["fetch", "-q", "--prune", &url, "+refs/*:refs/*"];
        let out = git(&self.mirror, &args);
        if !out.status.success() {
            return Err(format!("fetching every ref failed: {}", stderr_of(&out)));
        }
        let fetched = refs_of(&self.mirror);
        if fetched != *refs {
            return Err(format!(
                "a fetch got {fetched:?}, the REST API lists {refs:?}"
            ));
        }
        Ok(())
    }

    /// A fresh bare clone of the node, checked with `git fsck --full`.
    fn clone_and_fsck(&mut self, node: &Node, round: usize) {
        let dest = self.tmp.path().join(format!("clone-{round}.git"));
        let url = node.repo_url(&self.owner, NAME);
        let dest_str = dest.to_str().expect("utf-8 path");
        let out = git(self.tmp.path(), &["clone", "-q", "--bare", &url, dest_str]);
        let result = if !out.status.success() {
            Err(format!("clone failed: {}", stderr_of(&out)))
        } else {
            let out = git(&dest, &["fsck", "--full", "--no-progress"]);
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("git fsck --full of a clone: {}", stderr_of(&out)))
            }
        };
        if let Err(e) = result {
            self.violation(round, e);
        }
        let _ = std::fs::remove_dir_all(&dest);
    }
}

/// Where the kills landed.
#[derive(Default)]
struct Stats {
    /// The node was killed before it had answered the push ...
    before_answer: usize,
    /// ... of which this many after the push had moved a ref.
    applied_unanswered: usize,
    /// The push was answered `ok` before the kill.
    after_answer: usize,
    kinds: BTreeMap<&'static str, usize>,
}

/// Sends `push` and waits for the answer, which must be a success; returns
/// how long the push took.
fn push_uninterrupted(node: &Node, owner: &str, push: &Push) -> Duration {
    let flight = send(node, owner, push);
    let (answer, at) = flight.thread.join().expect("push thread");
    let resp = answer.unwrap_or_else(|e| panic!("uninterrupted push: {e}"));
    assert!(
        report(&resp)
            .is_some_and(|r| r.len() == push.sets.len() && r.values().all(Option::is_none)),
        "uninterrupted push failed: {}",
        resp.text()
    );
    at - flight.started
}

/// Creates main, then pushes three fast-forwards (100, 250 and 400 KiB)
/// without interruption; returns the longest of those three pushes.
fn setup(h: &mut Harness, node: &Node) -> Duration {
    let mut longest = Duration::ZERO;
    for size in [1 << 10, 100 << 10, 250 << 10, 400 << 10] {
        let refs = node.server_refs(&h.owner, NAME);
        let main = refs.get(MAIN).cloned();
        let new = h.work.commit(main.as_deref(), size, &mut h.rng);
        let mut push = Push::new("fast-forward");
        push.command(MAIN, main.as_deref(), Some(&new));
        push.pack = h.work.pack(&[&new], &refs);
        let took = push_uninterrupted(node, &h.owner, &push);
        if main.is_some() {
            println!("uninterrupted push of {} KiB: {took:?}", size >> 10);
            longest = longest.max(took);
        }
    }
    longest
}

/// One round: a push, a SIGKILL after a random delay, a restart, the checks.
fn round(h: &mut Harness, node: &mut Node, i: usize, took: Duration, stats: &mut Stats) {
    let refs = node.server_refs(&h.owner, NAME);
    let push = plan(&mut h.work, &mut h.rng, &refs);
    let delay = took.mul_f64(KILL_SPREAD * h.rng.unit());
    let flight = send(node, &h.owner, &push);
    std::thread::sleep(delay.saturating_sub(flight.started.elapsed()));
    node.stop();
    let killed = flight.started.elapsed();
    let (answer, answered_at) = flight.thread.join().expect("push thread");
    *node = h.start();

    let acked = match &answer {
        Ok(resp) => match report(resp) {
            Some(r) if r.len() == push.sets.len() && r.values().all(Option::is_none) => true,
            _ => {
                let what = format!("the node answered a push with {}", resp.text());
                h.violation(i, what);
                false
            }
        },
        Err(_) => false,
    };
    let now = node.server_refs(&h.owner, NAME);
    let applied = push.sets.iter().any(|(n, v)| now.get(n) == v.as_ref());
    let outcome = if acked {
        stats.after_answer += 1;
        format!("answered after {:?}", answered_at - flight.started)
    } else {
        stats.before_answer += 1;
        stats.applied_unanswered += usize::from(applied);
        let moved = if applied {
            "ref moved"
        } else {
            "refs unchanged"
        };
        format!("unanswered, {moved}")
    };
    *stats.kinds.entry(push.kind).or_default() += 1;
    println!(
        "round {i}: {} ({} KiB), killed at {killed:?}: {outcome}",
        push.kind,
        push.pack.len() >> 10
    );
    h.check(
        node,
        i,
        acked.then_some((&push, flight.certificate.as_str())),
    );
}

/// A second node seeds the repository from node 1 and must end with the
/// same refs and the same log.
fn replicate(h: &mut Harness, node1: &Node) {
    let node2 = peer_node(&h.tmp.path().join("node2"), Some(&p2p_addr(node1)), false);
    wait_connected(&node2, 1);
    let resp = node2.post_json(
        &format!("/api/v1/repos/{}/{NAME}/seed", h.owner),
        &serde_json::json!({}),
    );
    if resp.status != 200 {
        let what = format!("node 2 could not seed: {} {}", resp.status, resp.text());
        h.violation(ITERATIONS, what);
        return;
    }
    // The same updates; node 2's log is in the order it received them
    // (log comparison sends them by key range, ADR 0016).
    let sorted = |node: &Node| {
        let mut u: Vec<String> = updates(node, &h.owner, NAME)
            .iter()
            .map(|v| {
                let mut v = v.clone();
                v["seq"] = serde_json::Value::Null;
                v.to_string()
            })
            .collect();
        u.sort();
        u
    };
    let same_log = || sorted(node1) == sorted(&node2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(same_refs(node1, &node2, &h.owner, NAME) && same_log()) {
        if Instant::now() > deadline {
            let what = format!(
                "after replication node 2 has refs {:?} and {} log entries, node 1 {:?} and {}",
                node2.server_refs(&h.owner, NAME),
                updates(&node2, &h.owner, NAME).len(),
                node1.server_refs(&h.owner, NAME),
                updates(node1, &h.owner, NAME).len()
            );
            h.violation(ITERATIONS, what);
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "node 2 replicated {} refs and {} log entries",
        node2.server_refs(&h.owner, NAME).len(),
        updates(&node2, &h.owner, NAME).len()
    );
}

fn git_available() -> bool {
    std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The crash test: at least 50 signed pushes, each interrupted by a
/// SIGKILL at a random moment (or answered first), the node restarted each
/// time on the same data.
#[test]
fn signed_pushes_survive_kill_9_at_any_moment() {
    if !git_available() {
        println!("SKIP: the crash test needs the `git` binary");
        return;
    }
    let started = Instant::now();
    let mut h = Harness::new();
    let mut node = h.start();
    node.create_repo("alice", NAME);
    let took = setup(&mut h, &node);
    println!(
        "seed {SEED:#x}: {ITERATIONS} rounds, kills within [0, {:?}]",
        took.mul_f64(KILL_SPREAD)
    );
    let mut stats = Stats::default();
    for i in 0..ITERATIONS {
        round(&mut h, &mut node, i, took, &mut stats);
        if i % FSCK_EVERY == FSCK_EVERY - 1 {
            h.clone_and_fsck(&node, i);
        }
    }
    // The node was last restarted with replication on, as node 2 needs.
    replicate(&mut h, &node);
    println!("pushes by kind: {:?}", stats.kinds);
    println!(
        "crash summary: {ITERATIONS} rounds, {} kills before the answer ({} after a ref moved), \
         {} after the answer, {} violations, {:?}",
        stats.before_answer,
        stats.applied_unanswered,
        stats.after_answer,
        h.violations.len(),
        started.elapsed()
    );
    // Once a ref moved without its log entry, later rounds find more
    // violations that follow from it: the first ones say most.
    let list: Vec<String> = h
        .violations
        .iter()
        .take(12)
        .map(|(round, what)| format!("round {round}: {what}"))
        .collect();
    assert!(
        h.violations.is_empty(),
        "crash consistency violated ({} distinct violations, the first {}):\n{}",
        h.violations.len(),
        list.len(),
        list.join("\n")
    );
}
