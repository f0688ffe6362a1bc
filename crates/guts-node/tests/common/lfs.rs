//! Helpers of the Git LFS tests (tests/lfs.rs, ADR 0022).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{cli_ok, test_identity, Node, Rng};

/// Whether the real git-lfs client is installed (else the tests print SKIP).
pub fn git_lfs_available() -> bool {
    Command::new("git-lfs")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A pseudo-random file of `len` bytes under the target dir, written once
/// and reused by later runs (hard-link it where a test needs it).
pub fn fixture_file(len: u64, seed: u64) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guts-lfs-fixtures");
    fs::create_dir_all(&dir).expect("create fixture dir");
    let path = dir.join(format!("noise-{len}-{seed}.bin"));
    if fs::metadata(&path).is_ok_and(|m| m.len() == len) {
        return path;
    }
    let tmp = dir.join(format!("noise-{len}-{seed}.{}", std::process::id()));
    let mut out = std::io::BufWriter::new(fs::File::create(&tmp).expect("create fixture"));
    let mut rng = Rng(seed);
    let mut left = len;
    while left > 0 {
        let n = left.min(1 << 20);
        out.write_all(&rng.noise(n as usize))
            .expect("write fixture");
        left -= n;
    }
    out.flush().expect("flush fixture");
    drop(out);
    fs::rename(&tmp, &path).expect("rename fixture");
    path
}

/// Whether two files have the same bytes (read a MiB at a time).
pub fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        fs::File::open(a).expect("open a"),
        fs::File::open(b).expect("open b"),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).expect("read") {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// The SHA-256 (hex) of `data`: an LFS object id.
pub fn oid_of(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A push token for `repo` (`OWNER/NAME`), minted by its owner.
pub fn new_token(node: &Node, repo: &str) -> String {
    let key = test_identity().key_path.display().to_string();
    cli_ok(node, &["token", "new", repo, "--key", &key])
        .trim()
        .to_owned()
}

/// Files left in the node's LFS temporary directory.
pub fn lfs_tmp_files(node: &Node) -> usize {
    fs::read_dir(node.data_dir().join("lfs").join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The pid of the node serving `node`'s data dir (from /proc).
pub fn node_pid(node: &Node) -> u32 {
    let wanted = node.data_dir().as_os_str().as_encoded_bytes().to_vec();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_node = args.first().is_some_and(|a| a.ends_with(b"guts-node"));
        if is_node
            && args
                .windows(2)
                .any(|w| w[0] == b"--data-dir" && w[1] == wanted.as_slice())
        {
            return pid;
        }
    }
    panic!("no guts-node process for {}", node.data_dir().display())
}

/// A `Vm*` line of /proc/PID/status, in KiB.
pub fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
