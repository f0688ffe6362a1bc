//! The server side of push: receive-pack (v0/v1; git has no v2 push).
//!
//! Order of operations, each step able to refuse without side effects until
//! the pack is published:
//! 1. parse the commands (and push options),
//! 2. ask the [`PushPolicy`] to authorize them (before a byte of the pack),
//! 3. stream the pack into a quarantine and index it ([`crate::pack_in`]),
//! 4. check connectivity of the new tips and per-ref rules (names,
//!    fast-forward, not deleting HEAD's branch),
//! 5. publish the pack, then let the policy commit the ref changes together
//!    with what it records (the node's signed-update log) in one sled
//!    transaction ([`crate::storage::Repo::commit_refs`]),
//! 6. report `unpack ok` / `ok` / `ng` lines, over side-band when asked.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, Read, Write};

use gix_hash::ObjectId;

mod request;

use crate::error::{Error, Result};
use crate::names::check_ref_name;
use crate::odb::ObjectStore;
use crate::pack_in::{self, PackLimits, Quarantine};
use crate::pktline::{PktReader, PktWriter, SideBand, SideBandMode};
use crate::storage::{RefRejection, RefUpdate, Repo};
use crate::walk::is_ancestor;

/// Node-wide settings for pushes: the bounds on the work one push may ask
/// for (see [`PackLimits`] and [`crate::limits`] for the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// Largest pack accepted, in bytes.
    pub max_pack_bytes: u64,
    /// Largest object accepted: its inflated size, or the size of the object
    /// a delta makes ([`crate::limits::DEFAULT_MAX_OBJECT_BYTES`]).
    pub max_object_bytes: u64,
    /// Most bytes a pack may inflate to, delta results included
    /// ([`crate::limits::inflated_budget`] of `max_pack_bytes`).
    pub max_inflated_bytes: u64,
    /// Deepest delta chain accepted ([`crate::limits::DEFAULT_MAX_DELTA_DEPTH`]).
    pub max_delta_depth: u32,
}

impl ReceiveOptions {
    /// The defaults of [`crate::limits`].
    pub const DEFAULT: ReceiveOptions =
        ReceiveOptions::for_max_pack_bytes(crate::limits::DEFAULT_MAX_PACK_BYTES);

    /// The defaults for a node whose pack size limit is `max_pack_bytes`.
    pub const fn for_max_pack_bytes(max_pack_bytes: u64) -> Self {
        let l = PackLimits::for_max_pack_bytes(max_pack_bytes);
        ReceiveOptions {
            max_pack_bytes: l.max_pack_bytes,
            max_object_bytes: l.max_object_bytes,
            max_inflated_bytes: l.max_inflated_bytes,
            max_delta_depth: l.max_delta_depth,
        }
    }

    /// The limits a received pack is held to.
    pub fn pack_limits(&self) -> PackLimits {
        PackLimits {
            max_pack_bytes: self.max_pack_bytes,
            max_object_bytes: self.max_object_bytes,
            max_inflated_bytes: self.max_inflated_bytes,
            max_delta_depth: self.max_delta_depth,
        }
    }
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions::DEFAULT
    }
}

/// One `old new ref` command as sent by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Expected current value (`None` for create).
    pub old: Option<ObjectId>,
    /// New value (`None` for delete).
    pub new: Option<ObjectId>,
    /// Ref name as sent.
    pub name: String,
}

/// Who may push, and what an accepted push leaves behind: decided outside
/// the git layer (the node implements it with signed push certificates,
/// repository identity documents and its signed-update log).
pub trait PushPolicy {
    /// What a successful authorization proves (for the node: the verified
    /// push certificate). It is consumed by [`PushPolicy::commit`], so the
    /// ref change carries the very value that was checked.
    type Authorized;
    /// The nonce to advertise as `push-cert=<nonce>`, if pushes must be signed.
    fn cert_nonce(&self) -> Option<String>;
    /// Accept or refuse a push before its pack is read. `cert` is the push
    /// certificate (payload and signature) if the client signed the push;
    /// `commands` are the updates it asks for. `Err` is shown to the user.
    fn authorize(
        &self,
        cert: Option<&str>,
        commands: &[Command],
    ) -> std::result::Result<Self::Authorized, String>;
    /// Apply `updates` (checked: names, rules, objects present) and record
    /// the push, in one transaction: implementations call
    /// [`Repo::commit_refs`] with their journal. Returns each update's
    /// verdict, in order.
    fn commit(
        &self,
        repo: &Repo,
        authorized: Self::Authorized,
        updates: &[RefUpdate],
        atomic: bool,
    ) -> Result<Vec<std::result::Result<(), RefRejection>>>;
}

/// What happened to a push, for logging and the REST API.
#[derive(Debug, Default, Clone)]
pub struct PushOutcome {
    /// Refs updated.
    pub updated: Vec<String>,
    /// Refs refused, with the reason sent to the client.
    pub rejected: Vec<(String, String)>,
    /// Objects received.
    pub objects: u32,
    /// Pack bytes received.
    pub bytes: u64,
}

/// A parsed request and the capabilities that shape the answer.
struct Push {
    commands: Vec<Command>,
    cert: Option<String>,
    shallow: bool,
    atomic: bool,
    report: bool,
    /// Why the request is refused before the policy is even asked.
    refusal: Option<String>,
}

/// Read the commands and push options; `None` for the empty probe git
/// sends before a large chunked body. A malformed request is answered with
/// an `ERR` packet (nothing is negotiated yet).
fn read_push(
    reader: &mut PktReader<&mut dyn BufRead>,
    out: &mut dyn Write,
) -> Result<Option<(Push, SideBandMode, bool)>> {
    let parsed = request::read_request(reader).and_then(|req| {
        if req.commands.is_empty() || !req.caps.contains("push-options") {
            return Ok((req, Vec::new()));
        }
        request::read_push_options(reader).map(|o| (req, o))
    });
    let (req, options) = match parsed {
        Ok(v) => v,
        Err(e) => {
            let _ = crate::pktline::write_pkt(out, format!("ERR receive-pack: {e}\n").as_bytes());
            return Err(e);
        }
    };
    if req.commands.is_empty() {
        return Ok(None);
    }
    // As git's receive-pack: a signed push must carry, in its certificate,
    // exactly the push options it sends.
    let options_mismatch = req
        .cert
        .as_deref()
        .is_some_and(|c| request::cert_push_options(c) != options);
    let refusal = if req.cert_mismatch {
        Some("the push certificate does not match the pushed commands".to_owned())
    } else if options_mismatch {
        Some(
            "the push certificate does not match the push options sent (inconsistent push options)"
                .to_owned(),
        )
    } else {
        None
    };
    let mode = if req.caps.contains("side-band-64k") {
        SideBandMode::Large
    } else {
        SideBandMode::None
    };
    let progress = !req.caps.contains("quiet");
    let push = Push {
        atomic: req.caps.contains("atomic"),
        report: req.caps.contains("report-status") || req.caps.contains("report-status-v2"),
        commands: req.commands,
        cert: req.cert,
        shallow: req.shallow,
        refusal,
    };
    Ok(Some((push, mode, progress)))
}

/// Serve one receive-pack POST request.
pub fn receive_pack<P: PushPolicy + ?Sized>(
    repo: &Repo,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    opts: ReceiveOptions,
    policy: &P,
) -> Result<PushOutcome> {
    let mut reader = PktReader::new(input);
    let Some((push, mode, progress)) = read_push(&mut reader, out)? else {
        return Ok(PushOutcome::default());
    };
    let mut sb = SideBand::new(out, mode, progress);
    let mut input = reader.into_inner();
    let verdict = match &push.refusal {
        Some(reason) => Err(reason.clone()),
        None => policy.authorize(push.cert.as_deref(), &push.commands),
    };
    let authorized = match verdict {
        Ok(a) => a,
        Err(reason) => return refuse(repo, &push, &reason, &mut input, &mut sb, opts),
    };
    let result = process(repo, &push, &mut input, &mut sb, opts, |updates| {
        policy.commit(repo, authorized, updates, push.atomic)
    });
    let (unpack, results, outcome) = match result {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(repo = %repo.name(), error = %e, "push refused");
            let e = explain_shallow(e, push.shallow);
            let reason = match &e {
                Error::Pack(_)
                | Error::NotConnected { .. }
                | Error::TooLarge(_)
                | Error::Limit { .. }
                | Error::CorruptObject { .. } => "unpacker error",
                Error::Unsupported(_) => "not supported by this node",
                Error::DiskFull => "the node's disk is full",
                _ => "server error",
            };
            let results = push
                .commands
                .iter()
                .map(|_| Err(reason.to_owned()))
                .collect();
            (Err(e.to_string()), results, PushOutcome::default())
        }
    };
    write_report(&mut sb, push.report, &unpack, &push.commands, &results)?;
    Ok(outcome)
}

/// A push from a shallow clone whose objects do not connect: say why.
fn explain_shallow(e: Error, shallow: bool) -> Error {
    match e {
        Error::NotConnected { .. } if shallow => Error::Pack(format!(
            "{e}; this push comes from a shallow clone whose history this repository lacks \
             (run `git fetch --unshallow` and push again)"
        )),
        other => other,
    }
}

/// The `unpack` status of a push refused before its pack was read.
pub const NOT_UNPACKED: &str = "not unpacked: the push was refused before its pack was read";

/// Answer a push the policy refused: every ref `ng` with the reason, the
/// rest of the request read so the client sees the answer, not a reset.
fn refuse(
    repo: &Repo,
    push: &Push,
    reason: &str,
    input: &mut dyn BufRead,
    sb: &mut SideBand<&mut dyn Write>,
    opts: ReceiveOptions,
) -> Result<PushOutcome> {
    tracing::warn!(repo = %repo.name(), %reason, "push not authorized");
    let _ = std::io::copy(&mut input.take(opts.max_pack_bytes), &mut std::io::sink());
    sb.progress(&format!("{reason}\n"))?;
    let results: Vec<std::result::Result<(), String>> = push
        .commands
        .iter()
        .map(|_| Err(one_line(reason)))
        .collect();
    // The pack was not read, so `unpack ok` would be untrue (and clients
    // such as isomorphic-git take it as success).
    let unpack = Err(NOT_UNPACKED.to_owned());
    write_report(sb, push.report, &unpack, &push.commands, &results)?;
    Ok(PushOutcome {
        rejected: push
            .commands
            .iter()
            .map(|c| (c.name.clone(), reason.to_owned()))
            .collect(),
        ..PushOutcome::default()
    })
}

/// Write `unpack` and per-ref `ok`/`ng` lines (when `report-status` was
/// asked for) and end the response.
fn write_report(
    sb: &mut SideBand<&mut dyn Write>,
    report: bool,
    unpack: &std::result::Result<(), String>,
    commands: &[Command],
    results: &[std::result::Result<(), String>],
) -> Result<()> {
    if report {
        let mut status = PktWriter::new(Vec::new());
        match unpack {
            Ok(()) => status.line("unpack ok")?,
            Err(e) => status.line(&format!("unpack {}", one_line(e)))?,
        }
        for (c, r) in commands.iter().zip(results) {
            match r {
                Ok(()) => status.line(&format!("ok {}", c.name))?,
                Err(reason) => status.line(&format!("ng {} {}", c.name, one_line(reason)))?,
            }
        }
        status.flush_pkt()?;
        sb.write_all(&status.into_inner())?;
    }
    if sb.is_multiplexed() {
        sb.flush_pkt()?;
    }
    sb.flush()?;
    Ok(())
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Each command's verdict, in order: `Err` holds the reason sent to the client.
type Verdicts = Vec<std::result::Result<(), String>>;

type Report = (std::result::Result<(), String>, Verdicts, PushOutcome);

/// Receive the pack into a quarantine and check that the new tips connect.
fn receive_objects(
    repo: &Repo,
    odb: &ObjectStore,
    commands: &[Command],
    input: &mut dyn BufRead,
    sb: &mut SideBand<&mut dyn Write>,
    opts: ReceiveOptions,
) -> Result<Option<Quarantine>> {
    if !commands.iter().any(|c| c.new.is_some()) {
        return Ok(None);
    }
    let q = {
        let mut report = |bytes: u64| {
            let _ = sb.progress(&format!(
                "Receiving pack: {:.1} MiB\r",
                bytes as f64 / 1048576.0
            ));
        };
        pack_in::receive(
            &repo.objects_dir(),
            odb,
            input,
            &opts.pack_limits(),
            &mut report,
        )?
    };
    sb.progress(&format!(
        "Received {} objects ({} bytes), checking connectivity\n",
        q.objects, q.bytes_received
    ))?;
    let tips: Vec<ObjectId> = commands.iter().filter_map(|c| c.new).collect();
    q.check_connectivity(odb, &tips)?;
    Ok(Some(q))
}

/// Check every command against the rules; returns each one's verdict and
/// the updates of the accepted ones (with their command indexes).
fn check_all(
    repo: &Repo,
    view: &ObjectStore,
    commands: &[Command],
) -> Result<(Verdicts, Vec<(usize, RefUpdate)>)> {
    let settings = repo.settings()?;
    let mut results = Vec::with_capacity(commands.len());
    let mut updates = Vec::new();
    let mut seen = HashSet::new();
    // Ref names as they will be, to refuse a ref that would be both a file
    // and a directory (`refs/heads/a` beside `refs/heads/a/b`), as git does.
    let mut names: BTreeSet<String> = repo
        .refs()?
        .into_iter()
        .map(|r| r.name)
        .filter(|n| !commands.iter().any(|c| c.new.is_none() && &c.name == n))
        .collect();
    for (i, c) in commands.iter().enumerate() {
        let checked = check_command(view, c, &settings, repo, &mut seen).and_then(|update| {
            if update.new.is_some() {
                if let Some(other) = ref_dir_conflict(&names, &update.name) {
                    return Err(format!(
                        "cannot create {}: {other} exists (a ref cannot be both a file and a directory)",
                        update.name
                    ));
                }
                names.insert(update.name.clone());
            }
            Ok(update)
        });
        match checked {
            Ok(update) => {
                updates.push((i, update));
                results.push(Ok(()));
            }
            Err(reason) => results.push(Err(reason)),
        }
    }
    Ok((results, updates))
}

fn process(
    repo: &Repo,
    push: &Push,
    input: &mut dyn BufRead,
    sb: &mut SideBand<&mut dyn Write>,
    opts: ReceiveOptions,
    commit: impl FnOnce(&[RefUpdate]) -> Result<Vec<std::result::Result<(), RefRejection>>>,
) -> Result<Report> {
    let odb = repo.objects()?;
    let quarantine = receive_objects(repo, &odb, &push.commands, input, sb, opts)?;
    let view = match &quarantine {
        Some(q) => q.overlay(&odb),
        None => odb.clone(),
    };
    let (mut results, mut accepted) = check_all(repo, &view, &push.commands)?;
    let mut outcome = PushOutcome {
        objects: quarantine.as_ref().map_or(0, |q| q.objects),
        bytes: quarantine.as_ref().map_or(0, |q| q.bytes_received),
        ..PushOutcome::default()
    };
    if push.atomic && results.iter().any(|r| r.is_err()) {
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = Err(RefRejection::AtomicFailed.to_string());
        }
        accepted.clear();
    }
    if !accepted.is_empty() {
        if let Some(q) = quarantine {
            q.publish(&repo.objects_dir())?;
        }
        let updates: Vec<RefUpdate> = accepted.iter().map(|(_, u)| u.clone()).collect();
        match commit(&updates) {
            Ok(applied) => {
                for ((i, u), r) in accepted.iter().zip(applied) {
                    match r {
                        Err(rej) => results[*i] = Err(rej.to_string()),
                        Ok(()) => outcome.updated.push(u.name.clone()),
                    }
                }
            }
            Err(Error::Rejected(reason)) => {
                sb.progress(&format!("{reason}\n"))?;
                for (i, _) in &accepted {
                    results[*i] = Err(one_line(&reason));
                }
            }
            Err(e) => return Err(e),
        }
        sb.progress(&format!("Updated {} ref(s)\n", outcome.updated.len()))?;
    }
    for (c, r) in push.commands.iter().zip(&results) {
        if let Err(reason) = r {
            outcome.rejected.push((c.name.clone(), reason.clone()));
        }
    }
    tracing::info!(
        repo = %repo.name(),
        updated = outcome.updated.len(),
        rejected = outcome.rejected.len(),
        objects = outcome.objects,
        bytes = outcome.bytes,
        "push processed"
    );
    Ok((Ok(()), results, outcome))
}

/// A ref among `names` that `name` would clash with: one below it
/// (`name/...`) or one it would be below (a leading part of `name`).
fn ref_dir_conflict(names: &std::collections::BTreeSet<String>, name: &str) -> Option<String> {
    let below = format!("{name}/");
    if let Some(n) = names.range(below.clone()..).next() {
        if n.starts_with(&below) {
            return Some(n.clone());
        }
    }
    name.match_indices('/')
        .map(|(i, _)| &name[..i])
        .find(|dir| names.contains(*dir))
        .map(str::to_owned)
}

fn check_command(
    odb: &ObjectStore,
    c: &Command,
    settings: &crate::storage::RepoSettings,
    repo: &Repo,
    seen: &mut HashSet<String>,
) -> std::result::Result<RefUpdate, String> {
    if check_ref_name(&c.name).is_err() {
        return Err("invalid ref name (see git check-ref-format)".into());
    }
    if !seen.insert(c.name.clone()) {
        return Err("ref named more than once in this push".into());
    }
    let mut buf = Vec::new();
    if c.new.is_none() && c.name == settings.head {
        return Err("refusing to delete the current branch (the repository's HEAD)".into());
    }
    if let (Some(old), Some(new)) = (c.old, c.new) {
        if settings.deny_non_fast_forwards && c.name.starts_with("refs/heads/") {
            let ff = matches!(
                (odb.kind(&old, &mut buf), odb.kind(&new, &mut buf)),
                (
                    Ok(Some(gix_object::Kind::Commit)),
                    Ok(Some(gix_object::Kind::Commit))
                )
            ) && is_ancestor(odb, old, new).unwrap_or(false);
            if !ff {
                return Err(
                    "non-fast-forward (this repository denies non-fast-forward pushes)".into(),
                );
            }
        }
    }
    if let Ok(current) = repo.find_ref(&c.name) {
        if current != c.old {
            return Err(RefRejection::Stale.to_string());
        }
    }
    if let (Some(new), true) = (c.new, c.name.starts_with("refs/heads/")) {
        match odb.kind(&new, &mut buf) {
            Ok(Some(gix_object::Kind::Commit)) => {}
            Ok(Some(kind)) => {
                return Err(format!("a branch must point at a commit, not a {kind}"));
            }
            Ok(None) => return Err(format!("object {new} is missing")),
            Err(e) => return Err(format!("cannot read new value: {e}")),
        }
    }
    let new_peeled = match c.new {
        Some(new) => match odb.peel(&new, &mut buf) {
            Ok((peeled, _)) if peeled != new => Some(peeled),
            Ok(_) => None,
            Err(e) => return Err(format!("cannot read new value: {e}")),
        },
        None => None,
    };
    Ok(RefUpdate {
        name: c.name.clone(),
        old: c.old,
        new: c.new,
        new_peeled,
    })
}

#[cfg(test)]
mod tests {
    use super::ref_dir_conflict;

    #[test]
    fn file_directory_clashes_are_found_both_ways() {
        let names: std::collections::BTreeSet<String> =
            ["refs/heads/a/b", "refs/heads/c", "refs/heads/a-b"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        assert_eq!(
            ref_dir_conflict(&names, "refs/heads/a").as_deref(),
            Some("refs/heads/a/b")
        );
        assert_eq!(
            ref_dir_conflict(&names, "refs/heads/c/d").as_deref(),
            Some("refs/heads/c")
        );
        assert_eq!(
            ref_dir_conflict(&names, "refs/heads/a-b/x").as_deref(),
            Some("refs/heads/a-b")
        );
        assert_eq!(ref_dir_conflict(&names, "refs/heads/ab"), None);
        assert_eq!(ref_dir_conflict(&names, "refs/heads/a/c"), None);
    }
}
