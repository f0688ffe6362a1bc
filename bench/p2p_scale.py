#!/usr/bin/env python3
"""Replication at scale: N guts nodes on 127.0.0.1 in a connected random
topology (each bootstraps from up to three earlier nodes, seeded
deterministically; no DHT, no mDNS), all seeding one repository; then
pushes to node 0, each timed from the start of `git push` to the moment the
last node's refs (REST, polled) show the new commit.

Reported per N: node start and connection time, the median time `git
push` took (signed push to node 0, part of push-to-all), the median and
worst push-to-all time over the runs, and the resident memory of the nodes after
the pushes (median and largest VmRSS, their sum, the largest VmHWM).

Usage: bench/p2p_scale.py [--sizes 10,30,100] [--runs 5] [--deadline 120]
       (builds guts-node --release first; needs no fixture)
"""
import argparse, concurrent.futures, json, os, random, statistics, sys, time, urllib.request

from benchlib import NODE_BIN, Bench, build_node, machine_line, proc_kib, sh


def http_json(method, url, token=None, timeout=60):
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def topology(n, seed=0x67757473):
    rng = random.Random(seed)
    return [set()] + [{rng.randrange(i) for _ in range(min(3, i))} for i in range(1, n)]


def start_nodes(b, n, tag):
    """Start n nodes wired as `topology(n)`; returns [(Popen, http addr)] once each has its bootstrap peers."""
    nodes, p2p = [], []
    for i, peers in enumerate(topology(n)):
        extra = ["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--no-dht", "--sync-interval", "0",
                 "--log", "warn"]
        if peers:
            extra += ["--bootstrap", ",".join(p2p[p] for p in sorted(peers))]
        node, addr = b.start_node(f"{tag}-{i}", *extra)
        with open(os.path.join(node.data_dir, "p2p.addr")) as f:
            p2p.append(f.read().split()[0])
        nodes.append((node, addr, len(peers)))
    deadline = time.time() + 60
    for node, addr, want in nodes:
        while len(http_json("GET", f"http://{addr}/api/v1/node")["connected_peers"]) < want:
            if time.time() > deadline:
                sys.exit(f"node {addr} never connected to its bootstrap peers")
            time.sleep(0.05)
    return [(node, addr) for node, addr, _ in nodes]


def operator_token(node):
    """The operator token of a node started by `Bench.start_node` (seeding needs it)."""
    with open(os.path.join(node.data_dir, "operator.token")) as f:
        return f.read().strip()


def head_of(addr, owner, name):
    try:
        return http_json("GET", f"http://{addr}/api/v1/repos/{owner}/{name}", timeout=10)["refs"].get("refs/heads/main")
    except Exception:
        return None


def wait_all(pool, addrs, owner, name, want, deadline):
    """Poll until every node's main is `want`; returns False at the deadline."""
    missing = list(addrs)
    while missing:
        if time.time() > deadline:
            return False
        got = list(pool.map(lambda a: head_of(a, owner, name), missing))
        missing = [a for a, h in zip(missing, got) if h != want]
        if missing:
            time.sleep(0.01)
    return True


def commit(work, env, i):
    with open(os.path.join(work, "f.txt"), "w") as f:
        f.write(f"change {i}\n")
    sh("git", "-C", work, "add", "f.txt", env=env)
    sh("git", "-C", work, "commit", "-qm", f"change {i}", env=env)
    return sh("git", "-C", work, "rev-parse", "HEAD", env=env).stdout.strip()


def run_size(b, n, runs, deadline_s):
    env = b.env
    t0 = time.time()
    nodes = start_nodes(b, n, f"n{n}")
    started = time.time() - t0
    addrs = [a for _, a in nodes]
    name = f"scale{n}"
    url = b.create_repo(addrs[0], name)
    work = os.path.join(b.tmp, f"work-{n}")
    sh("git", "init", "-q", "-b", "main", work, env=env)
    sh(NODE_BIN, "git-setup", "--repo", work, "--key", b.key, env=env)
    sh("git", "-C", work, "config", "user.name", "Bench", env=env)
    sh("git", "-C", work, "config", "user.email", "bench@example.org", env=env)
    commit(work, env, 0)
    sh("git", "-C", work, "push", "-q", url, "main", env=env)
    for node, a in nodes[1:]:
        http_json("POST", f"http://{a}/api/v1/repos/{b.owner}/{name}/seed", operator_token(node))
    times, pushes = [], []
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for r in range(1, runs + 1):
            want = commit(work, env, r)
            t = time.time()
            sh("git", "-C", work, "push", "-q", url, "main", env=env)
            pushes.append(time.time() - t)
            if not wait_all(pool, addrs, b.owner, name, want, t + deadline_s):
                sys.exit(f"{n} nodes: not every node had the push after {deadline_s} s")
            times.append(time.time() - t)
            time.sleep(0.5)
    rss = [proc_kib(node.pid, "VmRSS") / 1024 for node, _ in nodes]
    hwm = [proc_kib(node.pid, "VmHWM") / 1024 for node, _ in nodes]
    for node, _ in nodes:
        node.terminate()
    for node, _ in nodes:
        node.wait()
    return {"n": n, "start": started, "median": statistics.median(times), "max": max(times),
            "push": statistics.median(pushes),
            "rss_median": statistics.median(rss), "rss_max": max(rss), "rss_sum": sum(rss), "hwm_max": max(hwm)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,30,100")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds a push may take to reach every node")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if not args.no_build:
        build_node()
    b = Bench(fixture=False)
    rows = []
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            print(f"{n} nodes...", flush=True)
            rows.append(run_size(b, n, args.runs, args.deadline))
            b.nodes = [p for p in b.nodes if p.poll() is None]
    finally:
        b.close()
    print()
    print(f"{'nodes':>5} {'start+connect':>14} {'git push':>9} {'push-to-all median':>19} {'worst':>8} "
          f"{'RSS median':>11} {'RSS max':>8} {'RSS sum':>9} {'peak (HWM) max':>15}")
    for r in rows:
        print(f"{r['n']:>5} {r['start']:13.1f}s {r['push']:8.3f}s {r['median']:18.3f}s {r['max']:7.3f}s "
              f"{r['rss_median']:10.1f}M {r['rss_max']:7.1f}M {r['rss_sum']:8.0f}M {r['hwm_max']:14.1f}M")
    print(f"\n{args.runs} pushes per size. {machine_line()}")


if __name__ == "__main__":
    main()
