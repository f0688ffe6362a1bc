#!/usr/bin/env python3
"""Latency of the web view's pages (ADR 0018) on a large repository.

Starts guts-node (release), pushes the fixture (cargo by default: 214 refs,
191k objects) with a signed `git push --mirror`, measures the pages
unmaintained (no commit-graph yet), then runs `guts-node repo maintain` and
measures them again. Each page is fetched --requests times in a row (one
client, keep-alive off); the script reports p50/p90 latency and the node's
peak RSS during the requests. Target: under 50 ms p50 (measured, not
asserted).

Pages: the repository page (README, root tree, 20 recent commits, refs),
Cargo.toml at the default branch, the largest source file under src/ that
the file page shows whole, the tip commit with its diff, a page of the log
and the signed-update log.

Usage: bench/web_pages.py [--fixture cargo|ripgrep] [--requests N] [--no-build]
"""
import argparse, statistics, time, urllib.error, urllib.request

import benchlib
from benchlib import Bench, build_node, machine_line, measure, sh

NODE_FLAGS = ["--rate-limit", "0", "--max-connections-per-client", "1024", "--no-auto-maintenance"]
MAX_SHOWN = 512 * 1024


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            body = r.read()
            return r.status, body
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def bench_page(name, url, pid, n):
    """Fetch `url` `n` times; returns (p50 ms, p90 ms, peak RSS MiB, bytes)."""
    status, body = get(url)
    if status != 200:
        raise SystemExit(f"{name}: GET {url} answered {status}: {body[:300]!r}")
    times = []

    def action():
        for _ in range(n):
            t = time.perf_counter()
            s, _ = get(url)
            times.append(time.perf_counter() - t)
            if s != 200:
                raise SystemExit(f"{name}: status {s}")

    _, peak = measure(action, [pid])
    times.sort()
    p50 = statistics.median(times) * 1000
    p90 = times[min(len(times) - 1, int(len(times) * 0.9))] * 1000
    return p50, p90, peak / 1024, len(body)


def largest_source(src, branch):
    """The largest `*.rs` under src/ at `branch` that the file page shows whole."""
    out = sh("git", "-C", src, "ls-tree", "-r", "-l", branch, "--", "src/").stdout
    best = None
    for line in out.splitlines():
        meta, path = line.split("\t", 1)
        size = meta.split()[3]
        if path.endswith(".rs") and size.isdigit() and int(size) <= MAX_SHOWN:
            if best is None or int(size) > best[1]:
                best = (path, int(size))
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", choices=sorted(benchlib.FIXTURES), default="cargo")
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--no-build", action="store_true")
    args = p.parse_args()
    if not args.no_build:
        build_node()
    b = Bench(bundle=benchlib.FIXTURES[args.fixture])
    try:
        print(machine_line(), flush=True)
        node, addr = b.start_node("guts", *NODE_FLAGS)
        branch = "master"
        sh(benchlib.NODE_BIN, "repo", "create", "web", "--default-branch", branch, "--node", f"http://{addr}",
           "--key", b.key, env=b.env)
        t = time.perf_counter()
        sh("git", "push", "-q", "--mirror", f"http://{addr}/{b.owner}/web.git", cwd=b.src, env=b.env)
        print(f"setup: signed push --mirror took {time.perf_counter() - t:.1f} s", flush=True)
        tip = sh("git", "-C", b.src, "rev-parse", branch).stdout.strip()
        big, big_size = largest_source(b.src, branch)
        base = f"http://{addr}/{b.owner}/web"
        pages = [
            ("repository page", base),
            ("file: Cargo.toml", f"{base}/blob/{branch}/Cargo.toml"),
            (f"file: {big} ({big_size // 1024} KiB)", f"{base}/blob/{branch}/{big}"),
            ("commit page (tip)", f"{base}/commit/{tip}"),
            ("commit log, page 1", f"{base}/commits/{branch}"),
            ("signed updates", f"{base}/updates"),
        ]
        rows = []
        for state in ("unmaintained", "maintained"):
            if state == "maintained":
                t = time.perf_counter()
                sh(benchlib.NODE_BIN, "repo", "maintain", f"{b.owner}/web", "--node", f"http://{addr}",
                   "--data-dir", node.data_dir, "--key", b.key, env=b.env)
                print(f"setup: repo maintain took {time.perf_counter() - t:.1f} s", flush=True)
            for name, url in pages:
                p50, p90, peak, size = bench_page(name, url, node.pid, args.requests)
                rows.append((state, name, p50, p90, peak, size))
                print(f"{state:12} {name:48} p50 {p50:7.1f} ms  p90 {p90:7.1f} ms  peak RSS {peak:6.1f} MiB  {size // 1024} KiB",
                      flush=True)
        print()
        print("| repository | page | p50 | p90 | node peak RSS | page size |")
        print("|---|---|---|---|---|---|")
        for state, name, p50, p90, peak, size in rows:
            print(f"| {state} | {name} | {p50:.1f} ms | {p90:.1f} ms | {peak:.1f} MiB | {size // 1024} KiB |")
        print(f"\n{args.requests} sequential requests per page, fixture {args.fixture}.")
    finally:
        b.close()


if __name__ == "__main__":
    main()
