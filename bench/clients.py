#!/usr/bin/env python3
"""Other git clients and `git archive --remote` against guts-node, beside C
git's `git http-backend` (behind lighttpd, bitmap and commit-graph), in the
same run, on the ripgrep or cargo fixture.

Scenarios:
  clone-CLIENT   a full clone with stock git, dulwich, pygit2 (libgit2) and
                 isomorphic-git (the drivers of crates/guts-node/tests/interop,
                 installed by its install.sh; a client not installed is
                 reported as SKIP)
  archive-FMT    `git archive --remote=URL --format=tar|zip HEAD`: wall time,
                 and whether both servers sent the same bytes

The servers alternate run by run; each row reports medians, the ratio
guts/git and the server's peak RSS (guts-node; lighttpd and its CGI
children for git, sampled every 10 ms).

Usage: bench/clients.py [--fixture ripgrep|cargo] [--runs N] [--no-build]
"""
import argparse, hashlib, os, shutil, sys

import benchlib
from benchlib import Bench, build_node, machine_line, measure, metric_table, sh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTEROP = os.environ.get("GUTS_INTEROP_DIR", os.path.join(ROOT, "target", "interop"))
DRIVERS = os.path.join(ROOT, "crates", "guts-node", "tests", "interop")
NODE_FLAGS = ["--rate-limit", "0", "--max-connections-per-client", "1024", "--no-auto-maintenance"]


def clients():
    """(name, argv prefix of a `clone URL DIR` command) for every installed client."""
    python = os.path.join(INTEROP, "venv", "bin", "python")
    found = [("git", ["git", "-c", "protocol.version=2", "clone", "-q", "--bare"])]
    for name, script, ok in [
        ("dulwich", "dulwich_client.py", os.path.exists(python)),
        ("pygit2", "pygit2_client.py", os.path.exists(python)),
        ("isomorphic-git", "isogit_client.mjs",
         os.path.exists(os.path.join(INTEROP, "npm", "node_modules", "isomorphic-git"))),
    ]:
        program = "node" if script.endswith(".mjs") else python
        if ok:
            found.append((name, [program, os.path.join(DRIVERS, script), "clone"]))
        else:
            print(f"SKIP {name}: not installed (run crates/guts-node/tests/interop/install.sh)", flush=True)
    return found


def run_side(b, pid, argv, dest):
    """Run argv (its last argument `dest` is removed first) and measure it with the server `pid`."""
    shutil.rmtree(dest, ignore_errors=True)
    env = dict(b.env, GUTS_INTEROP_DIR=INTEROP)
    secs, peak = measure(lambda: sh(*argv, cwd=b.tmp, env=env), [pid])
    return secs, peak


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", choices=["ripgrep", "cargo"], default="ripgrep")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-build", action="store_true")
    args = p.parse_args()
    if not args.no_build:
        build_node()
    b = Bench(bundle=benchlib.FIXTURES[args.fixture])
    try:
        print(machine_line(), flush=True)
        node, addr = b.start_node("guts", *NODE_FLAGS)
        sh("git", "push", "-q", "--mirror", b.create_repo(addr, "serve"), cwd=b.src, env=b.env)
        sh(benchlib.NODE_BIN, "repo", "maintain", f"{b.owner}/serve", "--node", f"http://{addr}",
           "--data-dir", node.data_dir, "--key", b.key, env=b.env)
        ref_pid, ref_base = b.start_reference(name="serve", hosted=True)
        sh("git", "-C", os.path.join(b.refroot, "serve.git"), "config", "http.uploadarchive", "true", env=b.env)
        urls = {"guts": (node.pid, f"http://{addr}/{b.owner}/serve.git"), "git": (ref_pid, f"{ref_base}/serve.git")}
        rows = []
        for name, argv in clients():
            vals, peaks = {"guts": [], "git": []}, {"guts": [], "git": []}
            for _ in range(args.runs):
                for side, (pid, url) in urls.items():
                    dest = os.path.join(b.tmp, f"clone-{name}-{side}")
                    secs, peak = run_side(b, pid, argv + [url, dest], dest)
                    vals[side].append(secs)
                    peaks[side].append(peak)
            rows.append((f"clone {name}", "s", vals["guts"], vals["git"], max(peaks["guts"]), max(peaks["git"])))
        for fmt in ["tar", "zip"]:
            vals, peaks, digests = {"guts": [], "git": []}, {"guts": [], "git": []}, {}
            for _ in range(args.runs):
                for side, (pid, url) in urls.items():
                    out = os.path.join(b.tmp, f"archive-{side}.{fmt}")
                    argv = ["git", "archive", f"--remote={url}", f"--format={fmt}", "-o", out, "HEAD"]
                    secs, peak = run_side(b, pid, argv, out)
                    vals[side].append(secs)
                    peaks[side].append(peak)
                    with open(out, "rb") as f:
                        digests[side] = hashlib.sha256(f.read()).hexdigest()
            same = "identical" if digests["guts"] == digests["git"] else "DIFFERENT"
            print(f"archive {fmt}: {os.path.getsize(out)} bytes, {same} bytes from both servers", flush=True)
            rows.append((f"git archive --remote {fmt} ({same})", "s", vals["guts"], vals["git"],
                         max(peaks["guts"]), max(peaks["git"])))
        metric_table(rows, f"{args.runs} runs each, {args.fixture} fixture; ratio = guts / git http-backend.")
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(main())
