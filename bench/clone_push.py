#!/usr/bin/env python3
"""Side-by-side benchmark: guts-node vs C git's `git http-backend` (behind lighttpd).

Both servers run on 127.0.0.1 in the same run and serve the same repository
(the ripgrep fixture, 288 refs). For each scenario the stock git client runs
N times against each server, alternating; we report the median wall time,
the ratio guts/git, and the peak resident memory of the server side
(guts-node: its process; reference: lighttpd plus every CGI child, sampled
every 10 ms while the command runs). Pushes are signed on both sides.

Usage: bench/clone_push.py [--runs N]      (builds guts-node --release first)
"""
import argparse, os, shutil

from benchlib import Bench, build_node, sh, table, timed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    build_node()
    b = Bench()
    env, src, runs = b.env, b.src, args.runs
    try:
        ref_pid, ref_base = b.start_reference()
        ref_url = f"{ref_base}/rg.git"
        node, addr = b.start_node("guts")
        results = []

        g, r = [], []
        for i in range(runs):
            guts_url = b.create_repo(addr, f"push{i}")
            g.append(timed(["git", "push", "-q", "--mirror", guts_url], [node.pid], src, env))
            b.reference_repo(f"push{i}")
            r.append(timed(["git", "push", "-q", "--mirror", f"{ref_base}/push{i}.git"], [ref_pid], src, env))
        results.append(("push --mirror (288 refs, signed)", g, r))

        guts_url = f"http://{addr}/{b.owner}/push0.git"
        for proto in ("0", "2"):
            g, r = [], []
            for i in range(runs):
                for label, url, pids, acc in (("guts", guts_url, [node.pid], g), ("git", ref_url, [ref_pid], r)):
                    dest = os.path.join(b.tmp, f"clone-{label}-{proto}-{i}")
                    acc.append(timed(["git", "-c", f"protocol.version={proto}", "clone", "-q", "--bare", url, dest],
                                     pids, b.tmp, env))
                    shutil.rmtree(dest)
            results.append((f"clone --bare, protocol v{proto}", g, r))

        # Incremental fetch: a repository 20 commits behind on master, whose
        # newer objects were really pruned (so the server must send them).
        behind = os.path.join(b.tmp, "behind.git")
        sh("git", "clone", "-q", "--bare", "--no-local", src, behind, env=env)
        newer = sh("git", "-C", behind, "for-each-ref", "--contains", "master~19", "--format=%(refname)",
                   env=env).stdout.split()
        for ref in newer:
            if ref != "refs/heads/master":
                sh("git", "-C", behind, "update-ref", "-d", ref, env=env)
        sh("git", "-C", behind, "update-ref", "refs/heads/master", "refs/heads/master~20", env=env)
        sh("git", "-C", behind, "reflog", "expire", "--expire=now", "--all", env=env)
        sh("git", "-C", behind, "gc", "-q", "--prune=now", env=env)
        g, r = [], []
        for i in range(runs):
            for label, url, pids, acc in (("guts", guts_url, [node.pid], g), ("git", ref_url, [ref_pid], r)):
                dest = os.path.join(b.tmp, f"inc-{label}-{i}")
                shutil.copytree(behind, dest)
                acc.append(timed(["git", "-C", dest, "fetch", "-q", url, "+refs/heads/master:refs/heads/master"],
                                 pids, b.tmp, env))
                shutil.rmtree(dest)
        results.append(("fetch 20 commits behind (v2)", g, r))

        table(results, runs, "Servers alternate; peak RSS sampled every 10 ms over the server process tree.")
    finally:
        b.close()


if __name__ == "__main__":
    main()
