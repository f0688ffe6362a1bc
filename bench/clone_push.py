#!/usr/bin/env python3
"""Side-by-side benchmark: guts-node vs C git's `git http-backend` (behind lighttpd).

Both servers run on 127.0.0.1 in the same run and serve the same repository
(the ripgrep fixture, 288 refs, 14k objects). For each scenario the stock git
client runs N times against each server, alternating; we report the median
wall time, the ratio guts/git, and the peak resident memory of the server side
(guts-node: its process; reference: lighttpd plus every CGI child, sampled
every 10 ms while the command runs).

Usage: bench/clone_push.py [--runs N]      (builds guts-node --release first)
"""
import argparse, os, shutil, signal, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
BUNDLE = os.path.join(SHARED, "fixtures", "ripgrep.bundle")
REFSERVER = os.path.join(SHARED, "tools", "reference-server")


def sh(*args, cwd=None, env=None, check=True):
    return subprocess.run(args, cwd=cwd, env=env, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tree_rss_kib(pids):
    """Sum of VmRSS over the given pids and all their descendants."""
    children = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(p))
        except (OSError, IndexError, ValueError):
            pass
    total, stack, seen = 0, list(pids), set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total


def timed(cmd, server_pids, cwd, env):
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_kib(server_pids))
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    done.set()
    t.join()
    if r.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{r.stderr}")
    return elapsed, peak[0]


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not os.path.exists(BUNDLE):
        sys.exit(f"SKIP: fixture missing at {BUNDLE}")
    print("building guts-node (release)...", flush=True)
    sh("cargo", "build", "--release", "-q", "-p", "guts-node", cwd=ROOT)
    node_bin = os.path.join(ROOT, "target", "release", "guts-node")

    tmp = tempfile.mkdtemp(prefix="guts-bench-")
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=tmp, GIT_TERMINAL_PROMPT="0")
    src = os.path.join(tmp, "src.git")
    sh("git", "init", "-q", "--bare", src, env=env)
    sh("git", "-C", src, "fetch", "-q", BUNDLE, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*", env=env)

    # Reference: git http-backend behind lighttpd.
    refroot = os.path.join(tmp, "ref")
    os.makedirs(refroot)
    sh("git", "clone", "-q", "--mirror", src, os.path.join(refroot, "rg.git"), env=env)
    sh("git", "-C", os.path.join(refroot, "rg.git"), "repack", "-adq", env=env)
    port = free_port()
    sh(REFSERVER, "start", refroot, str(port))
    with open(os.path.join(refroot, ".reference-server", "pid")) as f:
        ref_pid = int(f.read().strip())
    ref_url = f"http://127.0.0.1:{port}/git/rg.git"

    # guts-node.
    data = os.path.join(tmp, "guts")
    node = subprocess.Popen([node_bin, "run", "--data-dir", data, "--http-listen", "127.0.0.1:0", "--log", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr_file = os.path.join(data, "http.addr")
    for _ in range(300):
        if os.path.exists(addr_file):
            break
        time.sleep(0.05)
    with open(addr_file) as f:
        addr = f.read().strip()
    try:
        results = []
        runs = args.runs

        def push_scenario(name, make_url):
            g, r = [], []
            for i in range(runs):
                for label, pids, acc in (("guts", [node.pid], g), ("git", [ref_pid], r)):
                    url = make_url(label, i)
                    acc.append(timed(["git", "push", "-q", "--mirror", url], pids, src, env))
            results.append((name, g, r))

        def guts_repo(i):
            name = f"push{i}"
            sh(node_bin, "repo", "create", f"bench/{name}", "--node", f"http://{addr}")
            return f"http://{addr}/bench/{name}.git"

        def ref_repo(i):
            path = os.path.join(refroot, f"push{i}.git")
            sh("git", "init", "-q", "--bare", path, env=env)
            return f"http://127.0.0.1:{port}/git/push{i}.git"

        push_scenario("push --mirror (288 refs)", lambda label, i: guts_repo(i) if label == "guts" else ref_repo(i))

        guts_url = f"http://{addr}/bench/push0.git"
        for proto in ("0", "2"):
            g, r = [], []
            for i in range(runs):
                for label, url, pids, acc in (("guts", guts_url, [node.pid], g), ("git", ref_url, [ref_pid], r)):
                    dest = os.path.join(tmp, f"clone-{label}-{proto}-{i}")
                    acc.append(timed(["git", "-c", f"protocol.version={proto}", "clone", "-q", "--bare", url, dest],
                                     pids, tmp, env))
                    shutil.rmtree(dest)
            results.append((f"clone --bare, protocol v{proto}", g, r))

        # Incremental fetch: a repository 20 commits behind on master, whose
        # newer objects were really pruned (so the server must send them).
        behind = os.path.join(tmp, "behind.git")
        sh("git", "clone", "-q", "--bare", "--no-local", src, behind, env=env)
        newer = sh("git", "-C", behind, "for-each-ref", "--contains", "master~19", "--format=%(refname)", env=env).stdout.split()
        for ref in newer:
            if ref != "refs/heads/master":
                sh("git", "-C", behind, "update-ref", "-d", ref, env=env)
        sh("git", "-C", behind, "update-ref", "refs/heads/master", "refs/heads/master~20", env=env)
        sh("git", "-C", behind, "reflog", "expire", "--expire=now", "--all", env=env)
        sh("git", "-C", behind, "gc", "-q", "--prune=now", env=env)
        g, r = [], []
        for i in range(runs):
            for label, url, pids, acc in (("guts", guts_url, [node.pid], g), ("git", ref_url, [ref_pid], r)):
                dest = os.path.join(tmp, f"inc-{label}-{i}")
                shutil.copytree(behind, dest)
                acc.append(timed(["git", "-C", dest, "fetch", "-q", url, "+refs/heads/master:refs/heads/master"],
                                 pids, tmp, env))
                shutil.rmtree(dest)
        results.append(("fetch 20 commits behind (v2)", g, r))

        print()
        print(f"{'scenario':36} {'guts median':>12} {'git median':>12} {'ratio':>7} {'guts peak RSS':>14} {'git peak RSS':>13}")
        for name, g, r in results:
            gm = statistics.median(t for t, _ in g)
            rm = statistics.median(t for t, _ in r)
            gp = max(m for _, m in g) / 1024
            rp = max(m for _, m in r) / 1024
            print(f"{name:36} {gm:11.3f}s {rm:11.3f}s {gm / rm:6.2f}x {gp:11.1f}MiB {rp:10.1f}MiB")
        print(f"\n{runs} runs each, alternating servers; peak RSS sampled every 10 ms over the server process tree.")
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait()
        subprocess.run([REFSERVER, "stop", refroot])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
