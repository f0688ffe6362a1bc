//! The server side of push: receive-pack (v0/v1; git has no v2 push).
//!
//! Order of operations, each step able to refuse without side effects until
//! the pack is published:
//! 1. parse the commands (and push options),
//! 2. stream the pack into a quarantine and index it ([`crate::pack_in`]),
//! 3. check connectivity of the new tips and per-ref rules (names,
//!    fast-forward, not deleting HEAD's branch),
//! 4. publish the pack, then compare-and-swap the refs in one sled
//!    transaction (atomic) or one per ref,
//! 5. report `unpack ok` / `ok` / `ng` lines, over side-band when asked.

use std::collections::HashSet;
use std::io::{BufRead, Read, Write};

use gix_hash::ObjectId;

mod request;

use crate::error::{Error, Result};
use crate::names::check_ref_name;
use crate::odb::ObjectStore;
use crate::pack_in;
use crate::pktline::{PktReader, PktWriter, SideBand, SideBandMode};
use crate::storage::{RefRejection, RefUpdate, Repo};
use crate::walk::is_ancestor;

/// Node-wide settings for pushes.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveOptions {
    /// Largest pack accepted, in bytes.
    pub max_pack_bytes: u64,
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

/// Who may push: decided outside the git layer (the node implements it with
/// signed push certificates and repository identity documents).
pub trait PushPolicy {
    /// The nonce to advertise as `push-cert=<nonce>`, if pushes must be signed.
    fn cert_nonce(&self) -> Option<String>;
    /// Accept or refuse a push before its pack is read. `cert` is the push
    /// certificate (payload and signature) if the client signed the push;
    /// `commands` are the updates it asks for. `Err` is shown to the user.
    fn authorize(
        &self,
        cert: Option<&str>,
        commands: &[Command],
    ) -> std::result::Result<(), String>;
    /// Called after refs changed, with the names of the refs updated.
    fn accepted(&self, cert: Option<&str>, updated: &[String]);
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

/// Serve one receive-pack POST request.
pub fn receive_pack(
    repo: &Repo,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    opts: ReceiveOptions,
    policy: &dyn PushPolicy,
) -> Result<PushOutcome> {
    let mut reader = PktReader::new(input);
    let req = match request::read_request(&mut reader) {
        Ok(v) => v,
        Err(e) => {
            // Nothing negotiated yet: a plain ERR packet is all the client understands.
            let _ = crate::pktline::write_pkt(out, format!("ERR receive-pack: {e}\n").as_bytes());
            return Err(e);
        }
    };
    let request::Request {
        commands,
        caps,
        cert,
        shallow,
        cert_mismatch,
    } = req;
    if commands.is_empty() {
        // The `0000` probe git sends before a large chunked body, or an empty push.
        return Ok(PushOutcome::default());
    }
    let options = if caps.contains("push-options") {
        match request::read_push_options(&mut reader) {
            Ok(o) => o,
            Err(e) => {
                let _ =
                    crate::pktline::write_pkt(out, format!("ERR receive-pack: {e}\n").as_bytes());
                return Err(e);
            }
        }
    } else {
        Vec::new()
    };
    // As git's receive-pack: a signed push must carry, in its certificate,
    // exactly the push options it sends.
    let options_mismatch = cert
        .as_deref()
        .is_some_and(|c| request::cert_push_options(c) != options);
    let mode = if caps.contains("side-band-64k") {
        SideBandMode::Large
    } else {
        SideBandMode::None
    };
    let progress = !caps.contains("quiet");
    let report = caps.contains("report-status") || caps.contains("report-status-v2");
    let atomic = caps.contains("atomic");
    let mut sb = SideBand::new(out, mode, progress);
    let mut input = reader.into_inner();
    let verdict = if cert_mismatch {
        Err("the push certificate does not match the pushed commands".to_owned())
    } else if options_mismatch {
        Err(
            "the push certificate does not match the push options sent (inconsistent push options)"
                .to_owned(),
        )
    } else {
        policy.authorize(cert.as_deref(), &commands)
    };
    if let Err(reason) = verdict {
        tracing::warn!(repo = %repo.name(), %reason, "push not authorized");
        // Read the rest of the request so the client sees the answer, not a reset.
        let _ = std::io::copy(
            &mut (&mut input).take(opts.max_pack_bytes),
            &mut std::io::sink(),
        );
        sb.progress(&format!("{reason}\n"))?;
        let results: Vec<std::result::Result<(), String>> =
            commands.iter().map(|_| Err(one_line(&reason))).collect();
        write_report(&mut sb, report, &Ok(()), &commands, &results)?;
        return Ok(PushOutcome {
            rejected: commands
                .iter()
                .map(|c| (c.name.clone(), reason.clone()))
                .collect(),
            ..PushOutcome::default()
        });
    }
    let result = process(repo, &commands, atomic, &mut input, &mut sb, opts).map_err(|e| match e {
        Error::Pack(msg) if shallow && msg.contains("not connected") => Error::Pack(format!(
            "{msg}; this push comes from a shallow clone whose history this repository lacks \
             (run `git fetch --unshallow` and push again)"
        )),
        other => other,
    });
    let (unpack, results, outcome) = match result {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(repo = %repo.name(), error = %e, "push refused");
            let reason = match &e {
                Error::Pack(_) | Error::TooLarge(_) | Error::CorruptObject { .. } => {
                    "unpacker error"
                }
                Error::Unsupported(_) => "not supported by this node",
                _ => "server error",
            };
            let results = commands.iter().map(|_| Err(reason.to_owned())).collect();
            (Err(e.to_string()), results, PushOutcome::default())
        }
    };
    write_report(&mut sb, report, &unpack, &commands, &results)?;
    if !outcome.updated.is_empty() {
        policy.accepted(cert.as_deref(), &outcome.updated);
    }
    Ok(outcome)
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

type Report = (
    std::result::Result<(), String>,
    Vec<std::result::Result<(), String>>,
    PushOutcome,
);

fn process(
    repo: &Repo,
    commands: &[Command],
    atomic: bool,
    input: &mut dyn BufRead,
    sb: &mut SideBand<&mut dyn Write>,
    opts: ReceiveOptions,
) -> Result<Report> {
    let odb = repo.objects()?;
    let needs_pack = commands.iter().any(|c| c.new.is_some());
    let quarantine = if needs_pack {
        let q = {
            let mut report = |bytes: u64| {
                let _ = sb.progress(&format!(
                    "Receiving pack: {:.1} MiB\r",
                    bytes as f64 / 1048576.0
                ));
            };
            pack_in::receive(
                &repo.objects_dir(),
                &odb,
                input,
                opts.max_pack_bytes,
                &mut report,
            )?
        };
        sb.progress(&format!(
            "Received {} objects ({} bytes), checking connectivity\n",
            q.objects, q.bytes_received
        ))?;
        let tips: Vec<ObjectId> = commands.iter().filter_map(|c| c.new).collect();
        q.check_connectivity(&odb, &tips)?;
        Some(q)
    } else {
        None
    };
    let view = match &quarantine {
        Some(q) => q.overlay(&odb),
        None => odb.clone(),
    };
    let settings = repo.settings()?;
    let mut results: Vec<std::result::Result<(), String>> = Vec::with_capacity(commands.len());
    let mut updates = Vec::new();
    let mut update_index = Vec::new();
    let mut seen = HashSet::new();
    // Ref names as they will be, to refuse a ref that would be both a file
    // and a directory (`refs/heads/a` beside `refs/heads/a/b`), as git does.
    let mut names: std::collections::BTreeSet<String> = repo
        .refs()?
        .into_iter()
        .map(|r| r.name)
        .filter(|n| !commands.iter().any(|c| c.new.is_none() && &c.name == n))
        .collect();
    for (i, c) in commands.iter().enumerate() {
        let checked = check_command(&view, c, &settings, repo, &mut seen).and_then(|update| {
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
                update_index.push(i);
                updates.push(update);
                results.push(Ok(()));
            }
            Err(reason) => results.push(Err(reason)),
        }
    }
    let any_refused = results.iter().any(|r| r.is_err());
    let mut outcome = PushOutcome {
        objects: quarantine.as_ref().map_or(0, |q| q.objects),
        bytes: quarantine.as_ref().map_or(0, |q| q.bytes_received),
        ..PushOutcome::default()
    };
    if atomic && any_refused {
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = Err(RefRejection::AtomicFailed.to_string());
        }
        updates.clear();
    }
    if !updates.is_empty() {
        if let Some(q) = quarantine {
            q.publish(&repo.objects_dir())?;
        }
        let applied = repo.update_refs(&updates, atomic)?;
        for ((i, u), r) in update_index.iter().zip(&updates).zip(applied) {
            if let Err(rej) = r {
                results[*i] = Err(rej.to_string());
            } else {
                outcome.updated.push(u.name.clone());
            }
        }
        sb.progress(&format!("Updated {} ref(s)\n", outcome.updated.len()))?;
    }
    for (c, r) in commands.iter().zip(&results) {
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
