//! Shared pieces of the fuzz targets: a storage with two repositories (one
//! empty, one holding `fixtures/small.pack`), a permissive push policy, a
//! fixed identity, and the checks every protocol response must pass.
//!
//! Storage lives in a temporary directory made once per fuzzing process;
//! directories of processes that are gone are removed when the next one
//! starts (`fuzz/run.sh` also points `TMPDIR` into `fuzz/target/tmp`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use guts_git::names::RepoName;
use guts_git::pktline::{write_flush, write_pkt, PktReader};
use guts_git::receive_pack::{receive_pack, Command, PushPolicy, ReceiveOptions};
use guts_git::storage::{RefRejection, RefUpdate, Repo, Storage};
use guts_identity::{Doc, DocumentBody, Keypair, Verified};

/// The pack of the seeded repository (see `seed-corpora.sh`).
pub const SMALL_PACK: &[u8] = include_bytes!("../fixtures/small.pack");
/// Its refs, `<id> <name>` per line.
pub const SMALL_REFS: &str = include_str!("../fixtures/small.refs");

/// Limits of the push targets: small, so one input costs little.
pub const OPTS: ReceiveOptions = ReceiveOptions {
    max_pack_bytes: 1 << 20,
    max_object_bytes: 1 << 20,
    max_inflated_bytes: 4 << 20,
    ..ReceiveOptions::DEFAULT
};

/// Accepts every push and applies it (no journal): the git layer's checks
/// run, authorization is not what these targets are about.
pub struct Open;

impl PushPolicy for Open {
    type Authorized = ();
    fn cert_nonce(&self) -> Option<String> {
        None
    }
    fn authorize(&self, _: Option<&str>, _: &[Command]) -> Result<(), String> {
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

/// Which repository an input runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// No refs, no objects.
    Empty,
    /// `fixtures/small.pack` with the refs of `fixtures/small.refs`.
    Seeded,
}

/// The storage of this process and its two repositories.
pub struct Fixture {
    _dir: tempfile::TempDir,
    storage: Storage,
}

fn name(which: Which) -> RepoName {
    let n = match which {
        Which::Empty => "empty",
        Which::Seeded => "seeded",
    };
    RepoName::new("fuzz", n).expect("valid name")
}

/// Remove `guts-fuzz-<pid>-*` directories of processes that no longer run.
fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix("guts-fuzz-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = std::env::temp_dir();
        remove_stale_dirs(&tmp);
        let dir = tempfile::Builder::new()
            .prefix(&format!("guts-fuzz-{}-", std::process::id()))
            .tempdir_in(&tmp)
            .expect("temp dir");
        let storage = Storage::open(&dir.path().join("data")).expect("storage");
        let f = Fixture { _dir: dir, storage };
        f.create(Which::Empty);
        f.create(Which::Seeded);
        f
    }

    fn create(&self, which: Which) {
        let repo = self.storage.create(&name(which)).expect("create repo");
        if which == Which::Seeded {
            let mut body = Vec::new();
            for (i, line) in SMALL_REFS.lines().enumerate() {
                let (id, refname) = line.split_once(' ').expect("fixture ref line");
                let zero = "0".repeat(40);
                let cmd = if i == 0 {
                    format!("{zero} {id} {refname}\0report-status\n")
                } else {
                    format!("{zero} {id} {refname}\n")
                };
                write_pkt(&mut body, cmd.as_bytes()).expect("vec write");
            }
            write_flush(&mut body).expect("vec write");
            body.extend_from_slice(SMALL_PACK);
            let mut out = Vec::new();
            let outcome =
                receive_pack(&repo, &mut &body[..], &mut out, OPTS, &Open).expect("fixture push");
            assert_eq!(
                outcome.updated.len(),
                SMALL_REFS.lines().count(),
                "fixture push: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    /// The repository `which`, as it is now.
    pub fn repo(&self, which: Which) -> Repo {
        self.storage.open_repo(&name(which)).expect("open repo")
    }

    /// Put `which` back in its initial state (after an accepted push).
    pub fn reset(&self, which: Which) {
        self.storage.delete(&name(which)).expect("delete repo");
        self.create(which);
    }
}

/// This process's fixture (made on first use), locked for one input.
pub fn fixture() -> MutexGuard<'static, Fixture> {
    static F: OnceLock<Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| Mutex::new(Fixture::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Push quarantines (`objects/incoming-*`) left in `objects_dir`.
pub fn quarantines(objects_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(objects_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("incoming-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A protocol response must be a sequence of well-formed pkt-lines.
pub fn assert_pkt_lines(out: &[u8], what: &str) {
    let mut r = PktReader::new(out);
    loop {
        match r.read() {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => panic!(
                "{what}: response is not pkt-lines ({e}): {:?}",
                String::from_utf8_lossy(&out[..out.len().min(512)])
            ),
        }
    }
}

/// With `GUTS_FUZZ_DEBUG` set, print what a target answered (to check
/// what seeds reach: `GUTS_FUZZ_DEBUG=1 fuzz/target/*/release/T -runs=0 fuzz/corpus/T`).
pub fn debug(what: &str, out: &[u8]) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("GUTS_FUZZ_DEBUG").is_some()) {
        eprintln!(
            "--- {what}: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(2048)])
        );
    }
}

/// One pkt-line.
pub fn pkt(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 4);
    write_pkt(&mut v, data).expect("payload within MAX_PKT_DATA");
    v
}

/// The key that owns the fixed identity (also the one `seed-corpora.sh`
/// signs its push with).
pub fn owner_key() -> Keypair {
    Keypair::from_seed(&[7u8; 32])
}

/// A second delegate's key.
pub fn other_key() -> Keypair {
    Keypair::from_seed(&[9u8; 32])
}

/// The genesis body of the fixed identity.
pub fn genesis_body() -> DocumentBody {
    DocumentBody::genesis(owner_key().did(), "seeded", "main", vec!["fuzz".into()])
}

/// The fixed identity, verified (made once).
pub fn genesis() -> &'static Doc<Verified> {
    static G: OnceLock<Doc<Verified>> = OnceLock::new();
    G.get_or_init(|| {
        let signed = genesis_body().sign(&[&owner_key()]);
        Doc::from_signed(signed)
            .and_then(Doc::verify_genesis)
            .expect("genesis verifies")
    })
}
