//! Tests of the signed-update log: appends, buckets, the index of old
//! values.

use super::*;
use guts_git::storage::{Repo, Storage};

/// A log beside an empty repository `z6Mkowner/demo`.
fn setup() -> (tempfile::TempDir, SignedLog, RepoName, Repo) {
    let dir = tempfile::tempdir().expect("tmp");
    let storage = Storage::open(dir.path()).expect("storage");
    let log = SignedLog::open(storage.db()).expect("log");
    let name = RepoName::new("z6Mkowner", "demo").expect("name");
    let repo = storage.create(&name).expect("repo");
    (dir, log, name, repo)
}

/// An entry with no ref lines, distinct per `certificate`.
fn entry(repo_id: Vec<u8>, certificate: String) -> Entry {
    let update = SignedRefUpdate {
        repo_id,
        certificate,
        doc_version: 1,
        refused: Vec::new(),
        grant: Vec::new(),
    };
    Entry {
        key: update.key(),
        update,
        lines: Vec::new(),
        signer: None,
        pushee: None,
    }
}

#[test]
fn concurrent_appends_keep_every_entry() {
    let (_dir, log, repo_name, repo) = setup();
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let (log, repo, repo_name) = (&log, &repo, &repo_name);
            s.spawn(move || {
                for i in 0..25u8 {
                    let entry = entry(vec![t, i], format!("{t}-{i}"));
                    repo.commit_refs(&[], true, &log.append(repo_name, &entry))
                        .expect("append");
                }
            });
        }
    });
    let entries = log.updates(&repo_name).expect("log");
    assert_eq!(entries.len(), 200, "no entry overwritten");
    let seqs: Vec<u64> = entries.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    let buckets = log.buckets(&repo_name).expect("buckets");
    assert_eq!(buckets.count(), 200, "every key counted once");
    let mut expected = guts_p2p::logset::LogSet::default();
    for (_, u) in &entries {
        expected.insert(u.key(), Vec::new());
    }
    assert_eq!(
        &buckets,
        expected.buckets(),
        "the buckets a peer would compute"
    );
    let some = log.keys_in(&repo_name, &[0, 7, 255]).expect("keys");
    assert_eq!(some, expected.keys_in(&[0, 7, 255]));
    let (_, first) = &entries[0];
    let (seq, bytes) = log
        .entry(&repo_name, &first.key())
        .expect("read")
        .expect("found");
    assert_eq!((seq, bytes), (1, first.encode_to_vec()));
}

/// An entry of one line `ref old -> new`.
fn line_entry(name: &str, old: u8, new: u8, tag: &str) -> Entry {
    let mut e = entry(vec![1], tag.into());
    e.lines.push(Line {
        name: name.into(),
        old: [old; 20],
        new: [new; 20],
    });
    e
}

#[test]
fn uncontested_fast_forwards_are_settled_by_the_index() {
    let (_dir, log, name, repo) = setup();
    let m = "refs/heads/main";
    let append = |e: &Entry| {
        repo.commit_refs(&[], true, &log.append(&name, e))
            .expect("append")
    };
    // ZERO -> 1 -> 2: each an uncontested extension of the value before.
    let create = line_entry(m, 0, 1, "a");
    assert_eq!(
        log.extends(&name, &create.lines[0], &[0; 20])
            .expect("index"),
        Some([1; 20])
    );
    append(&create);
    let next = line_entry(m, 1, 2, "b");
    assert_eq!(
        log.extends(&name, &next.lines[0], &[1; 20]).expect("index"),
        Some([2; 20])
    );
    append(&next);
    // Contested: another update from 1 exists; a cycle back to 1; an
    // update from a value the ref is not at; a second creation.
    for (old, new, at) in [(1, 3, 2), (2, 1, 2), (5, 6, 2), (0, 7, 2)] {
        let l = &line_entry(m, old, new, "c").lines[0];
        assert_eq!(
            log.extends(&name, l, &[at; 20]).expect("index"),
            None,
            "{old}->{new}"
        );
    }
    // Where the index settles it, it agrees with the rule over every line.
    let l = &line_entry(m, 2, 9, "d").lines[0];
    let mut all = log.lines(&name, m).expect("lines");
    all.push(conflict::RefUpdate {
        old: l.old,
        new: l.new,
        key: [9; 32],
    });
    assert_eq!(
        log.extends(&name, l, &[2; 20]).expect("index"),
        conflict::resolve(&all).value
    );
}

#[test]
fn an_entry_is_logged_once() {
    let (_dir, log, name, repo) = setup();
    let entry = entry(vec![1], "c".into());
    repo.commit_refs(&[], true, &log.append(&name, &entry))
        .expect("first");
    let again = repo.commit_refs(&[], true, &log.append(&name, &entry));
    assert!(
        matches!(&again, Err(guts_git::Error::Rejected(m)) if m == ALREADY_LOGGED),
        "{again:?}"
    );
    assert_eq!(log.updates(&name).expect("log").len(), 1);
    assert!(log.is_logged(&name, &entry.key).expect("index"));
}
