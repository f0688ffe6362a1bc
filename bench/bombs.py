#!/usr/bin/env python3
"""Attack packs against a running guts-node: each must be refused with
bounded memory and CPU.

Three packs, each sent as a signed push (stock `git push`, with the pack that
`git pack-objects` would have made replaced by the attack pack through a
`git` wrapper in git's exec-path), each to a fresh repository:

- delta bomb: a 1 MiB blob of zeros and two deltas on it that each make a
  512 MiB object (copy instructions), a pack of a few KB;
- zlib bombs: four blobs of 500 MB of zeros, about 2 MB of pack;
- deep chain: a blob and 60,000 offset deltas, each on the one before
  (about 1.2 MB of pack);

and, for the record, what a push costs at the limits: sixteen deltas each
making an object of exactly the default object limit (100 MiB). They are
within every limit, so the node indexes them all; the push is refused only
afterwards (its tip is not in the pack).

For each: refused or not (git's exit status, and whether the ref exists on
the node afterwards), the node's message, the node's peak resident memory
above its idle level (VmHWM after resetting it through
/proc/PID/clear_refs, or sampled VmRSS where that is not allowed), the
node's CPU seconds (utime+stime from /proc/PID/stat) and the wall time.

Usage: bench/bombs.py [--no-build | --node-bin PATH]   (builds guts-node
--release first; honours CARGO_TARGET_DIR). Stdlib only.
"""
import argparse, glob, hashlib, os, shutil, stat, subprocess, threading, time, zlib

import benchlib
from benchlib import Bench, build_node, sh

MIB = 1 << 20
OFS_DELTA, BLOB = 6, 3


class Pack:
    """A pack written entry by entry."""

    def __init__(self):
        self.buf = bytearray(b"PACK" + (2).to_bytes(4, "big") + bytes(4))
        self.count = 0

    def raw(self, kind, size, base, compressed):
        offset = len(self.buf)
        c = (kind << 4) | (size & 0x0F)
        size >>= 4
        while size:
            self.buf.append(c | 0x80)
            c = size & 0x7F
            size >>= 7
        self.buf.append(c)
        self.buf += base + compressed
        self.count += 1
        return offset

    def obj(self, kind, data):
        return self.raw(kind, len(data), b"", zlib.compress(data, 9))

    def ofs_delta(self, base_offset, delta):
        return self.raw(OFS_DELTA, len(delta), ofs_encoding(len(self.buf) - base_offset), zlib.compress(delta, 9))

    def finish(self):
        self.buf[8:12] = self.count.to_bytes(4, "big")
        return bytes(self.buf) + hashlib.sha1(self.buf).digest()


def ofs_encoding(n):
    out = [n & 0x7F]
    n >>= 7
    while n:
        n -= 1
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def delta_bomb():
    """A 1 MiB zero blob and two deltas each making 512 MiB + 1 byte."""
    p = Pack()
    base = p.obj(BLOB, bytes(MIB))
    for i in range(2):
        result = 512 * MIB + 1
        # insert one byte (so the two results differ), then 512 copies of the whole base
        # (copy op: 0x80, size byte 2 present = 0x40, value 0x10 -> 0x100000 bytes from offset 0)
        d = varint(MIB) + varint(result) + bytes([1, i]) + bytes([0xC0, 0x10]) * 512
        p.ofs_delta(base, d)
    return p.finish()


def limit_deltas(count=16, size=100 * MIB):
    """Not an attack the node refuses up front: `count` deltas each making an
    object of exactly the default object limit, to show what a push costs
    at the limits (it is refused later, the pushed tip not being in it)."""
    p = Pack()
    base = p.obj(BLOB, bytes(MIB))
    for i in range(count):
        d = varint(MIB) + varint(size) + bytes([1, i]) + bytes([0xC0, 0x10]) * (size // MIB - 1)
        d += bytes([0x80 | 0x10 | 0x20 | 0x40, 0xFF, 0xFF, 0x0F])  # the last MiB less one byte
        p.ofs_delta(base, d)
    return p.finish()


def zeros_stream(n):
    """A zlib stream of n zero bytes, built from one repeated full-flush block
    (compressing 500 MB at level 9 would take seconds per blob)."""
    z = bytes(MIB)
    c = zlib.compressobj(9)
    first = c.compress(z) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(z) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == c.compress(z) + c.flush(zlib.Z_FULL_FLUSH), "zlib output not repeatable"
    full, rest = divmod(n, MIB)
    tail = c.compress(bytes(rest)) + c.flush()
    adler = 1
    for _ in range(full):
        adler = zlib.adler32(z, adler)
    adler = zlib.adler32(bytes(rest), adler)
    return first + block * (full - 1) + tail[:-4] + adler.to_bytes(4, "big")


def zlib_bombs():
    """Four blobs of about 500 MB of zeros (sizes differ by a byte)."""
    p = Pack()
    for i in range(4):
        n = 500_000_000 + i
        p.raw(BLOB, n, b"", zeros_stream(n))
    return p.finish()


def deep_chain(depth=60_000):
    """A 32-byte blob and `depth` offset deltas, each on the one before."""
    def blob(i):
        return b"%08d" % i + b"-the-rest-is-shared-bytes\n"[:24]
    p = Pack()
    prev = p.obj(BLOB, blob(0))
    for i in range(1, depth + 1):
        d = varint(32) + varint(32) + bytes([8]) + blob(i)[:8] + bytes([0x80 | 0x01 | 0x10, 8, 24])
        prev = p.ofs_delta(prev, d)
    return p.finish()


def proc_field(pid, name):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_hwm(pid):
    """Reset the peak RSS (VmHWM) to the current RSS; False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def git_wrapper(tmp):
    """A git exec-path whose `git` replaces pack-objects' output with
    $GUTS_BOMB_PACK (git puts its exec-path first in PATH for the commands
    it runs, so a wrapper must live there); the rest links to git's own."""
    real_dir = subprocess.run(["git", "--exec-path"], stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    real = os.path.join(real_dir, "git")
    d = os.path.join(tmp, "git-exec")
    os.makedirs(d)
    for name in os.listdir(real_dir):
        if name != "git":
            os.symlink(os.path.join(real_dir, name), os.path.join(d, name))
    path = os.path.join(d, "git")
    with open(path, "w") as f:
        f.write(f"""#!/bin/sh
if [ "$1" = "pack-objects" ] && [ -n "$GUTS_BOMB_PACK" ]; then
  cat >/dev/null
  exec cat "$GUTS_BOMB_PACK"
fi
exec {real} "$@"
""")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return d


def attack(b, node, addr, work, env, name, pack_path):
    url = b.create_repo(addr, name)
    time.sleep(0.3)
    hwm_ok = reset_hwm(node.pid)
    idle = proc_field(node.pid, "VmRSS")
    peak = [idle]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc_field(node.pid, "VmRSS"))
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    cpu0, start = cpu_seconds(node.pid), time.perf_counter()
    r = subprocess.run(["git", "push", url, "HEAD:refs/heads/main"], cwd=work, env=dict(env, GUTS_BOMB_PACK=pack_path),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    time.sleep(0.2)
    cpu = cpu_seconds(node.pid) - cpu0
    done.set()
    t.join()
    if hwm_ok:
        peak[0] = max(peak[0], proc_field(node.pid, "VmHWM"))
    refs = sh("git", "ls-remote", url, env=env, check=False).stdout.strip()
    leftovers = glob.glob(os.path.join(node.data_dir, "**", "incoming-*"), recursive=True)
    message = next((l.strip() for l in r.stderr.splitlines() if "unpack" in l or "refused" in l),
                   r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "")
    return {
        "refused": r.returncode != 0 and not refs,
        "message": message,
        "rss_mib": (peak[0] - idle) / 1024,
        "idle_mib": idle / 1024,
        "cpu": cpu,
        "wall": wall,
        "leftovers": len(leftovers),
        "how": "VmHWM" if hwm_ok else "VmRSS sampled every 10 ms",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-build", action="store_true", help="use the existing release build")
    ap.add_argument("--node-bin", help="run this guts-node binary (implies --no-build)")
    args = ap.parse_args()
    if args.node_bin:
        benchlib.NODE_BIN = os.path.abspath(args.node_bin)
    elif not args.no_build:
        build_node()
    b = Bench(fixture=False)
    try:
        env = dict(b.env, GIT_EXEC_PATH=git_wrapper(b.tmp))
        work = os.path.join(b.tmp, "work")
        sh("git", "init", "-q", "-b", "main", work, env=env)
        with open(os.path.join(work, "README"), "w") as f:
            f.write("bombs\n")
        sh("git", "-C", work, "add", "README", env=env)
        sh("git", "-C", work, "-c", "user.name=b", "-c", "user.email=b@example.com", "commit", "-qm", "one", env=env)
        sh(benchlib.NODE_BIN, "git-setup", "--repo", work, "--key", b.key, env=env)
        node, addr = b.start_node("guts")
        attacks = [("delta bomb (2 x 512 MiB results)", "deltas", delta_bomb),
                   ("zlib bombs (4 x 500 MB zeros)", "zeros", zlib_bombs),
                   ("delta chain 60,000 deep", "chain", deep_chain),
                   ("(at the limits: 16 x 100 MiB deltas)", "limits", limit_deltas)]
        rows = []
        for label, name, make in attacks:
            path = os.path.join(b.tmp, f"{name}.pack")
            with open(path, "wb") as f:
                f.write(make())
            res = attack(b, node, addr, work, env, name, path)
            res["pack"] = os.path.getsize(path)
            rows.append((label, res))
            print(f"{label}: {'refused' if res['refused'] else 'ACCEPTED'}: {res['message']}", flush=True)
        print()
        print(f"{'attack':36} {'pack':>9} {'refused':>8} {'peak RSS above idle':>20} {'node CPU':>9} {'wall':>7}")
        for label, r in rows:
            print(f"{label:36} {r['pack'] / 1024:7.0f}KB {'yes' if r['refused'] else 'NO':>8} "
                  f"{r['rss_mib']:17.1f}MiB {r['cpu']:8.2f}s {r['wall']:6.2f}s")
        print(f"\nIdle RSS {rows[0][1]['idle_mib']:.1f} MiB; peak from {rows[0][1]['how']}; "
              f"quarantines left behind: {sum(r['leftovers'] for _, r in rows)}.")
        print("Goal: every attack refused, under 128 MiB above idle and 2 s of node CPU each.")
    finally:
        b.close()


if __name__ == "__main__":
    main()
