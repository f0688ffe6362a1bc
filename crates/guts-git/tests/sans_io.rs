//! The protocol core driven with byte buffers only: no sockets, no HTTP.
//! `git` is used to make packs and to check the packs we produce.

mod common;
use common::{empty_repo, git, git_env, pkt, text, v2, Open};

use std::path::Path;

use guts_git::pktline::{Packet, PktReader};
use guts_git::protocol::{advertise, Service, Version};
use guts_git::receive_pack::{receive_pack, Command as PushCommand, PushPolicy, ReceiveOptions};
use guts_git::storage::{RefRejection, RefUpdate, Repo};
use guts_git::upload_pack::{upload_pack, upload_pack_with_stats, Serving, UploadStats};

const ZERO: &str = "0000000000000000000000000000000000000000";

const OPTS: ReceiveOptions = ReceiveOptions {
    max_pack_bytes: 1 << 30,
    ..ReceiveOptions::DEFAULT
};

struct Fixture {
    _tmp: tempfile::TempDir,
    work: std::path::PathBuf,
    repo: Repo,
    c1: String,
    c2: String,
}

/// A storage with one repository and a work tree with two commits (not pushed).
fn fixture() -> Fixture {
    let tmp = tempfile::TempDir::new().expect("tmp");
    let (repo, work) = empty_repo(tmp.path(), Serving::default());
    std::fs::write(work.join("a.txt"), "one\n".repeat(200)).expect("write");
    git(&work, &["add", "a.txt"], None);
    git(&work, &["commit", "-q", "-m", "one"], None);
    let c1 = text(&work, &["rev-parse", "HEAD"]);
    std::fs::write(work.join("a.txt"), "one\n".repeat(200) + "two\n").expect("write");
    git(&work, &["commit", "-q", "-a", "-m", "two"], None);
    let c2 = text(&work, &["rev-parse", "HEAD"]);
    Fixture {
        _tmp: tmp,
        work,
        repo,
        c1,
        c2,
    }
}

fn pack_of(work: &Path, revs: &str) -> Vec<u8> {
    git(
        work,
        &["pack-objects", "--stdout", "--revs", "-q"],
        Some(revs.as_bytes()),
    )
}

fn push(repo: &Repo, commands: &[String], caps: &str, pack: &[u8]) -> String {
    let mut body = Vec::new();
    for (i, c) in commands.iter().enumerate() {
        if i == 0 {
            body.extend(pkt(&format!("{c}\0{caps}\n")));
        } else {
            body.extend(pkt(&format!("{c}\n")));
        }
    }
    body.extend(b"0000");
    body.extend_from_slice(pack);
    let mut out = Vec::new();
    let _ = receive_pack(repo, &mut &body[..], &mut out, OPTS, &Open);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn push_then_advertise_then_fetch_v0() {
    let f = fixture();
    let pack = pack_of(&f.work, &format!("{}\n", f.c2));
    let report = push(
        &f.repo,
        &[format!("{ZERO} {} refs/heads/main", f.c2)],
        "report-status",
        &pack,
    );
    assert!(report.contains("unpack ok"), "{report}");
    assert!(report.contains("ok refs/heads/main"), "{report}");

    let mut adv = Vec::new();
    advertise(&f.repo, Service::UploadPack, Version::V0, None, &mut adv).expect("advertise");
    let adv = String::from_utf8_lossy(&adv).into_owned();
    assert!(
        adv.starts_with("001e# service=git-upload-pack\n0000"),
        "{adv}"
    );
    assert!(adv.contains(&format!("{} HEAD\0", f.c2)), "{adv}");
    assert!(adv.contains("symref=HEAD:refs/heads/main"), "{adv}");
    assert!(
        adv.contains(&format!("{} refs/heads/main\n", f.c2)),
        "{adv}"
    );

    // Clone request: want, flush, done; no side-band so the pack comes raw.
    let mut req = pkt(&format!("want {} ofs-delta\n", f.c2));
    req.extend(b"0000");
    req.extend(pkt("done\n"));
    let mut out = Vec::new();
    let mut stats = UploadStats::default();
    upload_pack_with_stats(&f.repo, Version::V0, &mut &req[..], &mut out, &mut stats)
        .expect("upload-pack");
    // A clone: a pack for no `have`, generated, of both commits' objects.
    assert!(stats.pack && stats.haves == 0, "{stats:?}");
    assert_eq!(stats.objects, 6, "{stats:?}");
    assert!(stats.generation.is_some(), "{stats:?}");
    assert!(
        out.starts_with(b"0008NAK\n"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let pack = &out[8..];
    assert!(pack.starts_with(b"PACK"));

    // git accepts the pack and finds every object of both commits.
    let check = f.work.join("check.git");
    git(&f.work, &["init", "-q", "--bare", "check.git"], None);
    git(&check, &["index-pack", "--stdin", "--fix-thin"], Some(pack));
    let listed = text(&check, &["rev-list", "--objects", &f.c2]);
    // Two commits, two root trees, two versions of a.txt.
    assert_eq!(listed.lines().count(), 6, "{listed}");
}

#[test]
fn incremental_fetch_v2_sends_only_new_objects() {
    let f = fixture();
    let pack = pack_of(&f.work, &format!("{}\n", f.c2));
    push(
        &f.repo,
        &[format!("{ZERO} {} refs/heads/main", f.c2)],
        "report-status",
        &pack,
    );
    let mut req = pkt("command=fetch\n");
    req.extend(pkt("object-format=sha1\n"));
    req.extend(b"0001");
    req.extend(pkt("ofs-delta\n"));
    req.extend(pkt("no-progress\n"));
    req.extend(pkt(&format!("want {}\n", f.c2)));
    req.extend(pkt(&format!("have {}\n", f.c1)));
    req.extend(pkt("done\n"));
    req.extend(b"0000");
    let mut out = Vec::new();
    let mut stats = UploadStats::default();
    upload_pack_with_stats(&f.repo, Version::V2, &mut &req[..], &mut out, &mut stats)
        .expect("fetch");
    // A fetch: one `have`, three new objects.
    assert!(stats.pack && stats.haves == 1, "{stats:?}");
    assert_eq!(stats.objects, 3, "{stats:?}");
    let mut reader = PktReader::new(&out[..]);
    let first = reader.read().expect("read").expect("packet");
    assert_eq!(first, Packet::Data(b"packfile\n"));
    let mut pack = Vec::new();
    while let Some(p) = reader.read().expect("read") {
        match p {
            Packet::Data(d) if d[0] == 1 => pack.extend_from_slice(&d[1..]),
            Packet::Data(d) => assert_ne!(d[0], 3, "error band: {:?}", String::from_utf8_lossy(d)),
            Packet::Flush => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Commit two, its tree and the changed blob: exactly 3 objects.
    assert_eq!(&pack[..4], b"PACK");
    assert_eq!(
        u32::from_be_bytes([pack[8], pack[9], pack[10], pack[11]]),
        3
    );
}

#[test]
fn atomic_push_with_a_stale_ref_changes_nothing() {
    let f = fixture();
    let pack = pack_of(&f.work, &format!("{}\n", f.c2));
    push(
        &f.repo,
        &[
            format!("{ZERO} {} refs/heads/main", f.c1),
            format!("{ZERO} {} refs/heads/x", f.c1),
        ],
        "report-status",
        &pack,
    );
    // x is claimed to be at c2 (it is at c1): stale. Atomic: main must not move.
    let report = push(
        &f.repo,
        &[
            format!("{} {} refs/heads/main", f.c1, f.c2),
            format!("{} {} refs/heads/x", f.c2, f.c1),
        ],
        "report-status atomic",
        &pack_of(&f.work, ""),
    );
    assert!(
        report.contains("ng refs/heads/main atomic push failed"),
        "{report}"
    );
    assert!(report.contains("ng refs/heads/x stale info"), "{report}");
    assert_eq!(
        f.repo
            .find_ref("refs/heads/main")
            .expect("ref")
            .map(|i| i.to_string()),
        Some(f.c1.clone())
    );
}

#[test]
fn truncated_request_gets_err_packet() {
    let f = fixture();
    let mut out = Vec::new();
    let res = upload_pack(&f.repo, Version::V0, &mut &b"0032want 12"[..], &mut out);
    assert!(res.is_err());
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("ERR upload-pack: protocol error: truncated pkt-line"),
        "{text}"
    );
}

#[test]
fn pack_missing_its_parent_is_refused_and_leaves_nothing() {
    let f = fixture();
    // Only c2's objects, without c1 which c2 references as parent.
    let pack = pack_of(&f.work, &format!("{}\n^{}\n", f.c2, f.c1));
    let report = push(
        &f.repo,
        &[format!("{ZERO} {} refs/heads/main", f.c2)],
        "report-status",
        &pack,
    );
    assert!(
        report.contains("unpack pack error: the pushed objects are not connected"),
        "{report}"
    );
    assert!(report.contains("ng refs/heads/main"), "{report}");
    assert!(f.repo.refs().expect("refs").is_empty());
    let packs = std::fs::read_dir(f.repo.objects_dir().join("pack"))
        .expect("pack dir")
        .count();
    assert_eq!(packs, 0, "objects of a refused push were kept");
}

fn pack_count(pack: &[u8]) -> u32 {
    assert_eq!(&pack[..4], b"PACK");
    u32::from_be_bytes([pack[8], pack[9], pack[10], pack[11]])
}

/// Push the work tree's `new` to `main` (from `old`, or creating it),
/// sending the objects `revs` name; returns the report.
fn push_main(f: &Fixture, old: Option<&str>, new: &str, revs: &str) -> String {
    let pack = pack_of(&f.work, revs);
    push(
        &f.repo,
        &[format!("{} {new} refs/heads/main", old.unwrap_or(ZERO))],
        "report-status",
        &pack,
    )
}

fn pushed_fixture() -> Fixture {
    let f = fixture();
    let report = push_main(&f, None, &f.c2, &format!("{}\n", f.c2));
    assert!(report.contains("ok refs/heads/main"), "{report}");
    f
}

#[test]
fn v2_depth_one_sends_the_boundary_and_one_commit() {
    let f = pushed_fixture();
    let args = [
        format!("want {}", f.c2),
        "ofs-delta".into(),
        "no-progress".into(),
        "deepen 1".into(),
        "done".into(),
    ];
    let (lines, pack) = v2(&f.repo, "fetch", &args);
    assert_eq!(
        lines,
        vec![
            "shallow-info".to_owned(),
            format!("shallow {}", f.c2),
            "<delim>".into(),
            "packfile".into()
        ]
    );
    assert_eq!(pack_count(&pack), 3, "commit, tree, blob of the tip only");

    // Deepening by one from that boundary unshallows it and sends its parent.
    let args = [
        format!("want {}", f.c2),
        format!("have {}", f.c2),
        format!("shallow {}", f.c2),
        "deepen 1".into(),
        "deepen-relative".into(),
        "ofs-delta".into(),
        "no-progress".into(),
        "done".into(),
    ];
    let (lines, pack) = v2(&f.repo, "fetch", &args);
    assert!(lines.contains(&format!("unshallow {}", f.c2)), "{lines:?}");
    assert!(lines.contains(&format!("shallow {}", f.c1)), "{lines:?}");
    assert_eq!(pack_count(&pack), 3, "commit one, its tree and blob");
}

#[test]
fn v2_blob_none_filter_omits_blobs_but_not_wanted_ones() {
    let f = pushed_fixture();
    let args = [
        format!("want {}", f.c2),
        "ofs-delta".into(),
        "no-progress".into(),
        "filter blob:none".into(),
        "done".into(),
    ];
    let (_, pack) = v2(&f.repo, "fetch", &args);
    assert_eq!(pack_count(&pack), 4, "two commits and two trees");

    let blob = text(&f.work, &["rev-parse", &format!("{}:a.txt", f.c1)]);
    let args = [
        format!("want {blob}"),
        "ofs-delta".into(),
        "no-progress".into(),
        "filter blob:none".into(),
        "done".into(),
    ];
    let (_, pack) = v2(&f.repo, "fetch", &args);
    assert_eq!(pack_count(&pack), 1, "the wanted blob despite blob:none");

    let bad = [
        format!("want {}", f.c2),
        "ofs-delta".into(),
        "filter sparse:oid=x".into(),
        "done".into(),
    ];
    let mut req = pkt("command=fetch\n");
    req.extend(b"0001");
    for a in &bad {
        req.extend(pkt(&format!("{a}\n")));
    }
    req.extend(b"0000");
    let mut out = Vec::new();
    assert!(upload_pack(&f.repo, Version::V2, &mut &req[..], &mut out).is_err());
    assert!(String::from_utf8_lossy(&out)
        .contains("ERR upload-pack: protocol error: invalid filter-spec 'sparse:oid=x'"));
}

#[test]
fn v2_object_info_reports_sizes() {
    let f = pushed_fixture();
    let blob = text(&f.work, &["rev-parse", &format!("{}:a.txt", f.c2)]);
    let missing = "1111111111111111111111111111111111111111";
    let (lines, _) = v2(
        &f.repo,
        "object-info",
        &[
            "size".into(),
            format!("oid {blob}"),
            format!("oid {missing}"),
        ],
    );
    assert_eq!(
        lines,
        vec![
            "size".to_owned(),
            format!("{blob} {}", 4 * 200 + 4),
            format!("{missing}")
        ]
    );
}

/// Requires a certificate and remembers what it was given.
struct SignedOnly {
    seen: std::sync::Mutex<Vec<(String, Vec<PushCommand>)>>,
}

impl PushPolicy for SignedOnly {
    type Authorized = ();
    fn cert_nonce(&self) -> Option<String> {
        Some("1-abc".into())
    }
    fn authorize(&self, cert: Option<&str>, commands: &[PushCommand]) -> Result<(), String> {
        let cert = cert.ok_or("unsigned push refused: configure push signing")?;
        self.seen
            .lock()
            .expect("lock")
            .push((cert.to_owned(), commands.to_vec()));
        Ok(())
    }
    fn commit(
        &self,
        repo: &Repo,
        _: (),
        updates: &[RefUpdate],
        atomic: bool,
    ) -> guts_git::Result<Vec<Result<(), RefRejection>>> {
        repo.update_refs(updates, atomic)
    }
}

#[test]
fn push_certificates_carry_the_commands() {
    let f = fixture();
    let policy = SignedOnly {
        seen: std::sync::Mutex::new(Vec::new()),
    };
    let pack = pack_of(&f.work, &format!("{}\n", f.c2));
    let cmd = format!("{ZERO} {} refs/heads/main", f.c2);
    let cert_lines = [
        "certificate version 0.1\n".to_owned(),
        "pusher X 1 +0000\n".into(),
        "pushee http://h/alice/demo.git\n".into(),
        "nonce 1-abc\n".into(),
        "\n".into(),
        format!("{cmd}\n"),
        "-----BEGIN SSH SIGNATURE-----\n".into(),
        "AAAA\n".into(),
        "-----END SSH SIGNATURE-----\n".into(),
    ];
    let mut body = pkt("push-cert\0report-status\n");
    for l in &cert_lines {
        body.extend(pkt(l));
    }
    body.extend(pkt("push-cert-end\n"));
    body.extend(b"0000");
    body.extend(&pack);
    let mut out = Vec::new();
    receive_pack(&f.repo, &mut &body[..], &mut out, OPTS, &policy).expect("push");
    let report = String::from_utf8_lossy(&out);
    assert!(report.contains("ok refs/heads/main"), "{report}");
    let seen = policy.seen.lock().expect("lock");
    assert_eq!(seen[0].0, cert_lines.concat());
    assert_eq!(seen[0].1.len(), 1);
    assert_eq!(seen[0].1[0].name, "refs/heads/main");

    // Unsigned: refused with the policy's words, nothing changes.
    let mut out = Vec::new();
    let mut body = pkt(&format!(
        "{ZERO} {} refs/heads/other\0report-status\n",
        f.c1
    ));
    body.extend(b"0000");
    body.extend(&pack);
    receive_pack(&f.repo, &mut &body[..], &mut out, OPTS, &policy).expect("answered");
    let report = String::from_utf8_lossy(&out);
    // Refused before the pack was read: not `unpack ok`.
    assert!(
        report.contains(&format!("unpack {}", guts_git::receive_pack::NOT_UNPACKED)),
        "{report}"
    );
    assert!(
        report.contains("ng refs/heads/other unsigned push refused: configure push signing"),
        "{report}"
    );
    assert!(f.repo.find_ref("refs/heads/other").expect("ref").is_none());

    // A command list beside the certificate that differs from it: refused.
    let mut body = pkt("push-cert\0report-status\n");
    for l in &cert_lines {
        body.extend(pkt(&l.replace("refs/heads/main", "refs/heads/signed")));
    }
    body.extend(pkt("push-cert-end\n"));
    body.extend(pkt(&format!("{ZERO} {} refs/heads/sneaky\n", f.c2)));
    body.extend(b"0000");
    body.extend(&pack);
    let mut out = Vec::new();
    receive_pack(&f.repo, &mut &body[..], &mut out, OPTS, &policy).expect("answered");
    let report = String::from_utf8_lossy(&out);
    assert!(
        report.contains("does not match the pushed commands"),
        "{report}"
    );
    assert!(f.repo.find_ref("refs/heads/signed").expect("ref").is_none());
    assert!(f.repo.find_ref("refs/heads/sneaky").expect("ref").is_none());
}

/// Resuming between nodes relies on upload-pack answering the same request
/// over the same stored packs with the same bytes; through `SkipPrefix` the
/// answer is then exactly the pack minus the bytes already held, and the
/// result indexes as a valid pack.
#[test]
fn a_resumed_v2_fetch_sends_only_the_rest_of_the_same_pack() {
    use guts_git::resume::{Partial, ResumePoint, SkipPrefix};
    use std::io::Read;

    let f = pushed_fixture();
    let args = vec![
        "ofs-delta".to_owned(),
        "no-progress".to_owned(),
        format!("want {}", f.c2),
        "done".to_owned(),
    ];
    let (_, first) = v2(&f.repo, "fetch", &args);
    let (_, second) = v2(&f.repo, "fetch", &args);
    assert_eq!(first, second, "the same request gives the same pack");

    let mut req = pkt("command=fetch\n");
    req.extend(pkt("object-format=sha1\n"));
    req.extend(b"0001");
    for a in &args {
        req.extend(pkt(&format!("{a}\n")));
    }
    req.extend(b"0000");
    let held = first.len() / 2;
    let mut h = gix_hash::hasher(gix_hash::Kind::Sha1);
    h.update(&first[..held]);
    let sha1: [u8; 20] = h
        .try_finalize()
        .expect("digest")
        .as_bytes()
        .try_into()
        .expect("20 bytes");
    let mut out = SkipPrefix::new(
        Vec::new(),
        ResumePoint {
            offset: held as u64,
            sha1,
        },
    );
    upload_pack(&f.repo, Version::V2, &mut &req[..], &mut out).expect("resumed fetch");
    let response = out.into_inner();

    // The receiver glues the kept bytes and the rest back together.
    let tmp = tempfile::TempDir::new().expect("tmp");
    let partial = Partial::for_request(tmp.path(), &req);
    std::fs::create_dir_all(partial.path().parent().expect("dir")).expect("mkdir");
    std::fs::write(partial.path(), &first[..held]).expect("write partial");
    let rest = guts_git::pktline::PackfileReader::new(&response[..]);
    let mut reader = partial.reader(held as u64, rest).expect("reader");
    let mut whole = Vec::new();
    reader.read_to_end(&mut whole).expect("read");
    assert_eq!(whole, first);
    assert!(
        response.len() < first.len() - held + 1000,
        "only the rest was sent"
    );
    partial.settle(reader, true);
    let idx = tempfile::TempDir::new().expect("tmp");
    git(idx.path(), &["init", "-q", "--bare"], None);
    git(
        idx.path(),
        &["index-pack", "--stdin", "--fix-thin"],
        Some(&whole),
    );
}

/// `deny_non_fast_forwards` must not call a real fast-forward a rewrite
/// because of commit dates: a new commit dated years before its parent (a
/// skewed clock) still descends from it.
#[test]
fn a_fast_forward_with_skewed_dates_is_a_fast_forward() {
    let f = pushed_fixture();
    f.repo.set_deny_non_fast_forwards(true).expect("settings");
    let date = "2001-01-01T00:00:00Z";
    git_env(
        &f.work,
        &["commit", "-q", "--allow-empty", "-m", "from a skewed clock"],
        None,
        &[("GIT_COMMITTER_DATE", date), ("GIT_AUTHOR_DATE", date)],
    );
    let c3 = text(&f.work, &["rev-parse", "HEAD"]);
    let report = push_main(&f, Some(&f.c2), &c3, &format!("{c3}\n^{}\n", f.c2));
    assert!(report.contains("ok refs/heads/main"), "{report}");
}

/// Request sections are read into memory only up to a named bound: a v2
/// request with oversized arguments is refused before anything is done,
/// and so is a nested filter that would otherwise recurse without end.
#[test]
fn oversized_or_pathological_requests_are_refused() {
    let f = pushed_fixture();
    let line = format!("have {}\n", "f".repeat(65_000));
    let mut req = pkt("command=fetch\n");
    req.extend(pkt("object-format=sha1\n"));
    req.extend(b"0001");
    let count = guts_git::limits::MAX_REQUEST_BYTES / 65_000 + 2;
    for _ in 0..count {
        req.extend(pkt(&line));
    }
    req.extend(b"0000");
    let mut out = Vec::new();
    let err = upload_pack(&f.repo, Version::V2, &mut &req[..], &mut out).expect_err("too large");
    assert!(err.to_string().contains("too large"), "{err}");

    let filter = format!("filter {}blob:none", "combine:".repeat(8_000));
    let args = [format!("want {}", f.c2), filter, "done".to_owned()];
    let mut req = pkt("command=fetch\n");
    req.extend(pkt("object-format=sha1\n"));
    req.extend(b"0001");
    for a in &args {
        req.extend(pkt(&format!("{a}\n")));
    }
    req.extend(b"0000");
    let mut out = Vec::new();
    let result = upload_pack(&f.repo, Version::V2, &mut &req[..], &mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(
        result.is_err() || text.contains("filter"),
        "refused with a clear error: {result:?} {text}"
    );
}

#[test]
fn pack_data_goes_out_in_full_side_band_packets() {
    let f = pushed_fixture();
    let mut req = pkt("command=fetch\n");
    req.extend(pkt("object-format=sha1\n"));
    req.extend(b"0001");
    for a in [
        "ofs-delta",
        "no-progress",
        &format!("want {}", f.c2),
        "done",
    ] {
        req.extend(pkt(&format!("{a}\n")));
    }
    req.extend(b"0000");
    let mut out = Vec::new();
    upload_pack(&f.repo, Version::V2, &mut &req[..], &mut out).expect("fetch");
    let mut reader = PktReader::new(&out[..]);
    let (mut sizes, mut in_pack) = (Vec::new(), false);
    while let Some(p) = reader.read().expect("valid response") {
        match p {
            Packet::Data(d) if in_pack && d[0] == 1 => sizes.push(d.len() - 1),
            Packet::Data(d) => in_pack |= d == b"packfile\n",
            _ => {}
        }
    }
    let total: usize = sizes.iter().sum();
    assert!(total > 0, "no pack");
    // Every packet but the last is full.
    let max = guts_git::pktline::MAX_PKT_DATA - 1;
    let (last, full) = sizes.split_last().expect("packets");
    assert!(full.iter().all(|n| *n == max), "{sizes:?}");
    assert!(*last <= max && *last > 0, "{sizes:?}");
    assert_eq!(sizes.len(), total.div_ceil(max), "{sizes:?}");
}
