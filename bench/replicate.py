#!/usr/bin/env python3
"""Replication benchmark: how long a fresh guts node takes to seed the
ripgrep fixture (288 refs) from a peer over libp2p, beside `git clone
--mirror` of the same repository from C git's `git http-backend` (behind
lighttpd), in the same run, at 0 ms and at an injected round-trip latency.

Latency is injected one of two ways (`--delay`):
  netem: the kernel's netem qdisc on the loopback interface of a private
         network namespace (the script re-runs itself under `unshare
         --net`, so nothing outside it is slowed down): packets from and to
         node A's p2p port and the reference server's port wait rtt/2 each
         way. Needs root, `tc` (iproute2) and `unshare`; the qdisc is
         removed after each latency, also on failure.
  proxy: a delaying TCP proxy (this script, asyncio): every chunk read from
         one side is written to the other rtt/2 later, in both directions,
         without limiting bandwidth. The peer node is dialled through the
         proxy (its `--bootstrap` names the proxy's port) and git's HTTP
         goes through one too. Sees chunks, not packets: TCP's own
         handshake and ACK clock are not delayed.
`auto` (the default) uses netem when it can and says why when it cannot.

What is timed:
  guts: `POST /api/v1/repos/OWNER/NAME/seed` on a new node B connected to
        node A (which holds the repository); the call returns when B holds
        the identity document, the signed-update log, every object and the
        refs. Then B's refs are checked against A's.
  git:  `git clone --mirror` from http-backend, then its refs are checked
        against the fixture's.
Peak memory is that of the serving side (node A; lighttpd and its CGI
children), sampled every 10 ms; node B's peak (its VmHWM) is printed beside it.
`--keep-logs DIR --b-log FILTER` keeps node B's logs (e.g. `--b-log
info,guts_p2p=debug,libp2p_stream=debug`) to see where the round trips go.

Usage: bench/replicate.py [--runs N] [--rtt-ms 30] [--delay auto|netem|proxy]
       (builds guts-node --release first unless --no-build)
"""
import argparse, asyncio, json, os, shutil, statistics, subprocess, sys, threading, time, urllib.request

from benchlib import Bench, build_node, measure, sh, table


class LatencyProxy:
    """Forwards 127.0.0.1:port to 127.0.0.1:target, delaying every chunk by `delay` seconds each way."""

    def __init__(self, target, delay, trace=False):
        self.target, self.delay = target, delay
        # (monotonic time read, "B>A" or "A>B", bytes) of every chunk, if tracing.
        self.trace = [] if trace else None
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait()

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def _pipe(self, reader, writer, way):
        queue = asyncio.Queue()

        async def read():
            while True:
                data = await reader.read(65536)
                now = time.monotonic()
                if self.trace is not None:
                    self.trace.append((now, way, len(data)))
                await queue.put((now + self.delay, data))
                if not data:
                    return

        async def write():
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(read(), write())
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, creader, cwriter):
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(self._pipe(creader, swriter, "B>A"), self._pipe(sreader, cwriter, "A>B"))

NETNS_MARK = "GUTS_BENCH_NETNS"


def netem_unavailable():
    """Why netem cannot be used here, or None."""
    if os.geteuid() != 0:
        return "netem needs root"
    for tool in ("tc", "ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (apt-get install iproute2 util-linux)"
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        return "cannot create a network namespace (unshare --net)"
    probe = subprocess.run(["unshare", "--net", "--", "sh", "-c",
                            "tc qdisc add dev lo root handle 1: prio bands 4 && "
                            "tc qdisc add dev lo parent 1:4 handle 40: netem delay 1ms"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"the kernel lacks the prio or netem qdisc: {probe.stderr.strip()}"
    return None


def reexec_in_netns():
    """Run this script again in a private network namespace with lo up; exits with its status."""
    argv = [a for a in sys.argv[1:]] + ["--no-build"]
    cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
           sys.executable, os.path.abspath(__file__), *argv]
    sys.exit(subprocess.run(cmd, env=dict(os.environ, **{NETNS_MARK: "1"})).returncode)


class Netem:
    """Delay packets from or to `ports` on lo by `delay_ms` (each way) with a
    prio qdisc whose fourth band, reached only through the port filters,
    holds netem. `close` removes it; use as a context manager."""

    def __init__(self, ports, delay_ms):
        def tc(*args):
            sh("tc", *args)

        try:
            tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio", "bands", "4",
               "priomap", *["0"] * 16)
            tc("qdisc", "add", "dev", "lo", "parent", "1:4", "handle", "40:", "netem",
               "delay", f"{delay_ms}ms", "limit", "100000")
            for port in ports:
                for way in ("sport", "dport"):
                    tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1",
                       "u32", "match", "ip", way, str(port), "0xffff", "flowid", "1:4")
        except BaseException:
            self.close()
            raise

    def close(self):
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def turns(trace, start, end, gap):
    """Round trips in a proxy trace between `start` and `end`: runs of chunks
    in one direction, a new run starting at each change of direction (after
    a quiet `gap` in the other). Returns [(t from start, way, chunks, bytes)]."""
    runs = []
    for t, way, n in trace:
        if not start <= t <= end:
            continue
        if runs and runs[-1][1] == way and t - runs[-1][4] < gap:
            r = runs[-1]
            runs[-1] = (r[0], way, r[2] + 1, r[3] + n, t)
        else:
            runs.append((t, way, 1, n, t))
    return [(t - start, way, c, n) for t, way, c, n, _ in runs]


def vm_hwm_kib(pid):
    """The process's peak resident set since it started (kernel's high-water mark)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def http_json(method, url, token=None, timeout=600):
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def operator_token(node):
    """The operator token of a node started by `Bench.start_node` (seeding needs it)."""
    with open(os.path.join(node.data_dir, "operator.token")) as f:
        return f.read().strip()


def node_refs(addr, owner, name):
    return http_json("GET", f"http://{addr}/api/v1/repos/{owner}/{name}")["refs"]


def choose_delay(args):
    """The latency injection to use; re-runs the script in a private network
    namespace for netem (not returning)."""
    if os.environ.get(NETNS_MARK):
        return "netem"
    if args.delay == "proxy":
        return "proxy"
    why = netem_unavailable()
    if why is None:
        if not args.no_build:
            build_node()
        reexec_in_netns()
    if args.delay == "netem":
        sys.exit(f"SKIP: {why}")
    print(f"netem unavailable ({why}); injecting latency with the TCP proxy", flush=True)
    return "proxy"


def one_seed(b, ctx, name, bootstrap, args):
    """Start node B bootstrapped to A, time the seed; returns ((s, A's peak KiB), B's VmHWM KiB)."""
    b_log = ["--log", args.b_log] if args.b_log else []
    node_b, b_addr = b.start_node(name, *ctx["p2p"], *b_log, "--bootstrap", bootstrap)
    deadline = time.time() + 30
    while not http_json("GET", f"http://{b_addr}/api/v1/node")["connected_peers"]:
        if time.time() > deadline:
            sys.exit(f"node B never connected to A; see {b.tmp}/{name}.log")
        time.sleep(0.05)

    token = operator_token(node_b)

    def seed():
        http_json("POST", f"http://{b_addr}/api/v1/repos/{b.owner}/rg/seed", token)

    t0, wall = time.monotonic(), time.time()
    timed = measure(seed, [ctx["a"].pid])
    ctx["last_seed"] = (t0, time.monotonic(), wall)
    b_hwm = vm_hwm_kib(node_b.pid)
    got = node_refs(b_addr, b.owner, "rg")
    if got != ctx["a_refs"]:
        sys.exit(f"node B's refs differ from A's after seeding ({len(got)} vs {len(ctx['a_refs'])})")
    node_b.terminate()
    node_b.wait()
    if args.keep_logs:
        os.makedirs(args.keep_logs, exist_ok=True)
        shutil.copy(os.path.join(b.tmp, f"{name}.log"), args.keep_logs)
    shutil.rmtree(node_b.data_dir)
    return timed, b_hwm


def write_turns(out_dir, name, trace, window, rtt):
    """Write the direction changes of the p2p connection during a seed (see `turns`)."""
    start, end, wall = window
    rows = turns(trace, start, end, rtt / 4000)
    with open(os.path.join(out_dir, f"{name}.turns"), "w") as f:
        stamp = time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1e6):06d}Z"
        f.write(f"# seed requested at {stamp} (node logs' clock), took {end - start:.3f} s; {len(rows)} runs "
                f"of chunks; time since the seed request (read by the proxy), direction, chunks, bytes\n")
        for t, way, c, n in rows:
            f.write(f"{t * 1000:8.1f} ms  {way}  {c:4} chunks {n:9} bytes\n")


def one_clone(b, ctx, git_url, dest):
    env = b.env

    def clone():
        sh("git", "clone", "-q", "--mirror", git_url, dest, env=env)

    timed = measure(clone, [ctx["ref_pid"]])
    got = dict(line.split()[::-1] for line in
               sh("git", "-C", dest, "for-each-ref", "--format=%(objectname) %(refname)",
                  env=env).stdout.splitlines())
    if got != ctx["src_refs"]:
        sys.exit("the git clone's refs differ from the fixture's")
    shutil.rmtree(dest)
    return timed


def at_latency(b, ctx, rtt, mode, args):
    """All runs at one round-trip time; returns (guts runs, git runs, B peaks)."""
    bootstrap, git_url = ctx["a_p2p"], f"{ctx['ref_base']}/rg.git"
    netem = None
    if rtt and mode == "proxy":
        p2p_proxy = LatencyProxy(ctx["a_port"], rtt / 2000, trace=bool(args.keep_logs))
        http_proxy = LatencyProxy(ctx["ref_port"], rtt / 2000)
        bootstrap = f"/ip4/127.0.0.1/tcp/{p2p_proxy.port}/p2p/{ctx['a_peer']}"
        git_url = f"http://127.0.0.1:{http_proxy.port}/git/rg.git"
    elif rtt:
        netem = Netem([ctx["a_port"], ctx["ref_port"]], rtt / 2)
    g, r, bp = [], [], []
    try:
        for i in range(args.runs):
            timed, hwm = one_seed(b, ctx, f"b-{int(rtt)}-{i}", bootstrap, args)
            if rtt and mode == "proxy" and args.keep_logs:
                write_turns(args.keep_logs, f"b-{int(rtt)}-{i}", p2p_proxy.trace, ctx["last_seed"], rtt)
            g.append(timed)
            bp.append(hwm)
            r.append(one_clone(b, ctx, git_url, os.path.join(b.tmp, f"mirror-{int(rtt)}-{i}.git")))
    finally:
        if netem:
            netem.close()
    return g, r, bp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rtt-ms", type=float, default=30.0, help="injected round-trip latency (besides 0 ms)")
    ap.add_argument("--delay", choices=["auto", "netem", "proxy"], default="auto")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--b-log", help="log filter of node B (e.g. info,guts_p2p=debug)")
    ap.add_argument("--keep-logs", help="copy node B's logs to this directory")
    args = ap.parse_args()
    mode = choose_delay(args)
    if mode == "proxy" and not args.no_build:
        build_node()
    b = Bench()
    env = b.env
    try:
        ref_pid, ref_base = b.start_reference()
        src_refs = dict(line.split()[::-1] for line in
                        sh("git", "-C", b.src, "for-each-ref", "--format=%(objectname) %(refname)",
                           env=env).stdout.splitlines())
        p2p = ["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--no-dht"]
        a, a_addr = b.start_node("a", *p2p)
        url = b.create_repo(a_addr, "rg")
        sh("git", "push", "-q", "--mirror", url, cwd=b.src, env=env)
        a_refs = node_refs(a_addr, b.owner, "rg")
        assert a_refs == src_refs, "node A does not hold the fixture's refs"
        a_p2p = open(os.path.join(a.data_dir, "p2p.addr")).read().split()[0]
        ctx = dict(a=a, a_refs=a_refs, a_p2p=a_p2p, a_port=int(a_p2p.split("/tcp/")[1].split("/")[0]),
                   a_peer=a_p2p.split("/p2p/")[1], ref_pid=ref_pid, ref_base=ref_base,
                   ref_port=int(ref_base.split(":")[2].split("/")[0]), src_refs=src_refs, p2p=p2p)
        results, b_peaks = [], {}
        for rtt in (0.0, args.rtt_ms):
            g, r, bp = at_latency(b, ctx, rtt, mode, args)
            label = f"{int(rtt)} ms RTT ({mode})" if rtt else "0 ms"
            results.append((f"seed from a peer vs clone --mirror, {label}", g, r))
            b_peaks[label] = max(bp) / 1024
        table(results, args.runs,
              "Peak RSS: serving side (node A; lighttpd + CGI). Receiving node B's peak: "
              + ", ".join(f"{k}: {v:.1f} MiB" for k, v in b_peaks.items()) + ".")
        for name, g, r in results:
            print(f"ratio guts/git, {name.split(', ')[-1]}: "
                  f"{statistics.median(t for t, _ in g) / statistics.median(t for t, _ in r):.2f}x")
    finally:
        b.close()


if __name__ == "__main__":
    main()
