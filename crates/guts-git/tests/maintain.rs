//! Repository maintenance and the clone paths it enables, driven without
//! sockets; stock `git` makes the packs and checks what comes out.

mod common;
use common::{empty_repo, git, pkt, push_pack, text, v2, Open};

use std::path::Path;

use guts_git::pack_cache::{CacheConfig, PackCache};
use guts_git::protocol::Version;
use guts_git::receive_pack::{receive_pack, ReceiveOptions};
use guts_git::storage::{MaintainOptions, Repo};
use guts_git::upload_pack::{upload_pack, PackSlots, Serving};

const ZERO: &str = "0000000000000000000000000000000000000000";

const OPTS: ReceiveOptions = ReceiveOptions {
    max_pack_bytes: 1 << 30,
    ..ReceiveOptions::DEFAULT
};

/// Push `revs`' objects (a `pack-objects --revs` input) with one command.
fn push(repo: &Repo, work: &Path, command: &str, revs: &str) {
    let pack = git(
        work,
        &["pack-objects", "--stdout", "--revs", "-q"],
        Some(revs.as_bytes()),
    );
    let report = push_pack(repo, &[command.to_owned()], &pack);
    assert!(!report.contains(" ng "), "{report}");
}

fn commit(work: &Path, file: &str, body: &str) -> String {
    std::fs::write(work.join(file), body).expect("write");
    git(work, &["add", file], None);
    git(work, &["commit", "-q", "-m", file], None);
    text(work, &["rev-parse", "HEAD"])
}

struct Setup {
    tmp: tempfile::TempDir,
    work: std::path::PathBuf,
    repo: Repo,
    main: String,
}

/// Three pushes (three packs) to main, and a branch pushed then deleted.
fn setup() -> Setup {
    setup_with(|_| Serving::default())
}

/// [`setup`] on a storage that serves with `serving(data dir)`.
fn setup_with(serving: impl FnOnce(&Path) -> Serving) -> Setup {
    let tmp = tempfile::TempDir::new().expect("tmp");
    let (repo, work) = empty_repo(tmp.path(), serving(&tmp.path().join("data")));
    let mut old = ZERO.to_owned();
    for i in 0..3 {
        let c = commit(&work, "a.txt", &format!("{}\n", "line\n".repeat(100 + i)));
        let revs = if old == ZERO {
            format!("{c}\n")
        } else {
            format!("{c}\n^{old}\n")
        };
        push(&repo, &work, &format!("{old} {c} refs/heads/main"), &revs);
        old = c;
    }
    git(&work, &["checkout", "-q", "-b", "gone"], None);
    let gone = commit(&work, "b.txt", "a branch that will be deleted\n");
    push(
        &repo,
        &work,
        &format!("{ZERO} {gone} refs/heads/gone"),
        &format!("{gone}\n^{old}\n"),
    );
    push(&repo, &work, &format!("{gone} {ZERO} refs/heads/gone"), "");
    git(&work, &["checkout", "-q", "main"], None);
    Setup {
        tmp,
        work,
        repo,
        main: old,
    }
}

/// A bare git repository holding a copy of `repo`'s packs and its refs:
/// what `git fsck --full` and `git verify-pack` check.
fn as_git_repo(s: &Setup, name: &str) -> std::path::PathBuf {
    let bare = s.tmp.path().join(name);
    git(s.tmp.path(), &["init", "-q", "--bare", name], None);
    for e in std::fs::read_dir(s.repo.objects_dir().join("pack")).expect("pack dir") {
        let p = e.expect("entry").path();
        std::fs::copy(
            &p,
            bare.join("objects/pack").join(p.file_name().expect("name")),
        )
        .expect("copy");
    }
    for r in s.repo.refs().expect("refs") {
        git(&bare, &["update-ref", &r.name, &r.id.to_string()], None);
    }
    bare
}

/// [`setup`], then maintained.
fn maintained() -> Setup {
    let s = setup();
    s.repo
        .maintain(MaintainOptions::default())
        .expect("maintain");
    s
}

/// Commit `file` on main in the work tree and push it (fast-forward).
fn push_next(s: &Setup, file: &str, content: &str) -> String {
    let next = commit(&s.work, file, content);
    push(
        &s.repo,
        &s.work,
        &format!("{} {next} refs/heads/main", s.main),
        &format!("{next}\n^{}\n", s.main),
    );
    next
}

/// Objects a pack's header declares.
fn objects_in(pack: &[u8]) -> u32 {
    u32::from_be_bytes([pack[8], pack[9], pack[10], pack[11]])
}

fn clone_args(want: &str) -> Vec<String> {
    let mut args = vec![format!("want {want}")];
    args.extend(["ofs-delta".into(), "no-progress".into(), "done".into()]);
    args
}

#[test]
fn maintenance_consolidates_and_keeps_every_object() {
    let s = setup();
    assert_eq!(s.repo.pack_count().expect("count"), 4);
    let report = s
        .repo
        .maintain(MaintainOptions::default())
        .expect("maintain");
    assert_eq!(report.packs_before, 4);
    assert_eq!(report.packs_after, 2, "{report:?}");
    assert_eq!(
        report.reachable_objects, 9,
        "3 commits, 3 trees, 3 blobs: {report:?}"
    );
    assert_eq!(
        report.cruft_objects, 3,
        "the deleted branch's commit, tree, blob"
    );
    assert_eq!(s.repo.pack_count().expect("count"), 2);
    let state = s.repo.maintenance_state().expect("state");
    assert_eq!(state.tips.len(), 1);
    assert_eq!(state.objects, 9);
    let bare = as_git_repo(&s, "check.git");
    git(&bare, &["fsck", "--full", "--strict"], None);
    for e in std::fs::read_dir(bare.join("objects/pack")).expect("dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "idx") {
            git(&bare, &["verify-pack", p.to_str().expect("utf-8")], None);
        }
    }
    let again = s.repo.maintain(MaintainOptions::default()).expect("again");
    assert!(again.up_to_date, "{again:?}");
}

#[test]
fn a_clone_of_the_maintained_refs_is_the_pack_file_itself() {
    let s = maintained();
    let state = s.repo.maintenance_state().expect("state");
    let (_, pack) = v2(&s.repo, "fetch", &clone_args(&s.main));
    let stored = std::fs::read(
        s.repo
            .objects_dir()
            .join("pack")
            .join(format!("{}.pack", state.pack)),
    )
    .expect("stored pack");
    assert_eq!(pack, stored, "the clone is not the stored pack's bytes");
}

#[test]
fn a_clone_after_new_pushes_reuses_the_pack_and_adds_the_rest() {
    let s = maintained();
    let next = push_next(&s, "c.txt", "after maintenance\n");
    let (_, pack) = v2(&s.repo, "fetch", &clone_args(&next));
    assert_eq!(objects_in(&pack), 12);
    // git checks the trailer and every object, and the result is complete.
    let bare = s.tmp.path().join("client.git");
    git(s.tmp.path(), &["init", "-q", "--bare", "client.git"], None);
    git(&bare, &["index-pack", "--strict", "--stdin"], Some(&pack));
    git(&bare, &["update-ref", "refs/heads/main", &next], None);
    git(&bare, &["fsck", "--full", "--strict"], None);
    // A partial request (a filter) is generated as before, and still right.
    let mut args = clone_args(&next);
    args.push("filter blob:none".into());
    let (_, filtered) = v2(&s.repo, "fetch", &args);
    let objects = objects_in(&filtered);
    assert_eq!(objects, 8, "4 commits and 4 trees, no blobs");
}

#[test]
fn negotiation_and_incremental_fetch_through_the_commit_graph() {
    let s = maintained();
    assert!(s.repo.objects_dir().join("info/commit-graph").exists());
    let next = push_next(&s, "c.txt", "after maintenance\n");
    // Many unknown haves and one known: only the known one is acknowledged,
    // and the server is ready (the want reaches it).
    let mut args = vec![format!("want {next}"), "ofs-delta".to_owned()];
    args.extend((0..1000).map(|i| format!("have {:040x}", i + 1)));
    args.push(format!("have {}", s.main));
    let (lines, pack) = v2(&s.repo, "fetch", &args);
    assert!(lines.contains(&format!("ACK {}", s.main)), "{lines:?}");
    assert!(lines.contains(&"ready".to_owned()), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("ACK")).count(), 1);
    // The pack after `ready` holds just the new commit, its tree and blob.
    assert_eq!(objects_in(&pack), 3);
}

/// A v2 fetch of `want` with progress on; the raw response.
fn raw_fetch(repo: &Repo, want: &str) -> Vec<u8> {
    let mut req = pkt("command=fetch\n");
    req.extend(b"0001");
    for a in [format!("want {want}"), "ofs-delta".into(), "done".into()] {
        req.extend(pkt(&format!("{a}\n")));
    }
    req.extend(b"0000");
    let mut out = Vec::new();
    upload_pack(repo, Version::V2, &mut &req[..], &mut out).expect("fetch");
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn a_fetch_waits_for_a_generation_slot_and_says_so() {
    let s = setup_with(|_| Serving {
        slots: PackSlots::new(1),
        cache: None,
    });
    let slots = &s.repo.serving().slots;
    let held = slots.try_acquire().expect("the only slot");
    std::thread::scope(|scope| {
        let fetch = scope.spawn(|| raw_fetch(&s.repo, &s.main));
        // The fetch is queued behind the held slot, then runs once it frees.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while slots.usage().1 == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the fetch never waited"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(held);
        let out = fetch.join().expect("fetch thread");
        assert!(
            contains(&out, "waiting for a free slot"),
            "no waiting message"
        );
        assert!(contains(&out, "PACK"), "no pack after the wait");
    });
    assert_eq!(slots.usage(), (0, 0));
}

#[test]
fn an_identical_fetch_is_served_from_the_pack_cache_until_refs_move() {
    let s = setup_with(|data| Serving {
        slots: PackSlots::new(2),
        cache: Some(
            PackCache::new(CacheConfig {
                dir: data.join("pack-cache"),
                max_bytes: 1 << 30,
                min_free_bytes: 0,
                min_entry_bytes: 0,
            })
            .expect("cache"),
        ),
    });
    let first = raw_fetch(&s.repo, &s.main);
    assert!(!contains(&first, "cached pack"));
    let second = raw_fetch(&s.repo, &s.main);
    assert!(
        contains(&second, "reused a cached pack"),
        "not served from the cache"
    );
    let (_, a) = v2(&s.repo, "fetch", &clone_args(&s.main));
    let (_, b) = v2(&s.repo, "fetch", &clone_args(&s.main));
    assert_eq!(a, b, "the cached pack differs from the generated one");
    // A ref moves: the cache no longer answers for this repository.
    push_next(&s, "d.txt", "moves a ref\n");
    let third = raw_fetch(&s.repo, &s.main);
    assert!(
        !contains(&third, "cached pack"),
        "served a pack cached before refs moved"
    );
}

#[test]
fn a_deleted_branch_is_not_sent_from_the_maintained_pack() {
    let s = setup();
    git(&s.work, &["checkout", "-q", "-b", "secret"], None);
    let secret = commit(&s.work, "secret.txt", "a leaked credential\n");
    push(
        &s.repo,
        &s.work,
        &format!("{ZERO} {secret} refs/heads/secret"),
        &format!("{secret}\n^{}\n", s.main),
    );
    git(&s.work, &["checkout", "-q", "main"], None);
    s.repo
        .maintain(MaintainOptions::default())
        .expect("maintain");
    assert_eq!(s.repo.maintenance_state().expect("state").tips.len(), 2);
    // The branch is deleted: its objects are in the maintained pack, and a
    // clone of what is left must not receive them.
    push(
        &s.repo,
        &s.work,
        &format!("{secret} {ZERO} refs/heads/secret"),
        "",
    );
    let (_, pack) = v2(&s.repo, "fetch", &clone_args(&s.main));
    assert_eq!(
        objects_in(&pack),
        9,
        "the clone holds objects of the deleted branch"
    );
    // A non-fast-forward move is refused the same way: main rewound.
    let first = text(&s.work, &["rev-list", "--max-parents=0", "HEAD"]);
    let mut body = pkt(&format!(
        "{} {first} refs/heads/main\0report-status\n",
        s.main
    ));
    body.extend(b"0000");
    let mut out = Vec::new();
    receive_pack(&s.repo, &mut &body[..], &mut out, OPTS, &Open).expect("rewind");
    let (_, pack) = v2(&s.repo, "fetch", &clone_args(&first));
    assert_eq!(
        objects_in(&pack),
        3,
        "a rewound branch's clone holds the commits it no longer reaches"
    );
}
