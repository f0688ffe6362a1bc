#!/usr/bin/env python3
"""Replication benchmark: how long a fresh guts node takes to seed the
ripgrep fixture (288 refs) from a peer over libp2p, beside `git clone
--mirror` of the same repository from C git's `git http-backend` (behind
lighttpd), in the same run, at 0 ms and at an injected round-trip latency.

Latency comes from a delaying TCP proxy (this script, asyncio): every chunk
read from one side is written to the other `rtt/2` later, in both
directions, without limiting bandwidth, so a protocol that needs many round
trips pays for each. The peer node is dialled through the proxy (its
`--bootstrap` names the proxy's port) and git's HTTP goes through one too.

What is timed:
  guts: `POST /api/v1/repos/OWNER/NAME/seed` on a new node B connected to
        node A (which holds the repository); the call returns when B holds
        the identity document, the signed-update log, every object and the
        refs. Then B's refs are checked against A's.
  git:  `git clone --mirror` from http-backend, then its refs are checked
        against the fixture's.
Peak memory is that of the serving side (node A; lighttpd and its CGI
children), sampled every 10 ms; node B's peak (its VmHWM) is printed beside it.

Usage: bench/replicate.py [--runs N] [--rtt-ms 30]   (builds guts-node --release first)
"""
import argparse, asyncio, json, os, shutil, statistics, sys, threading, time, urllib.request

from benchlib import Bench, build_node, measure, sh, table


class LatencyProxy:
    """Forwards 127.0.0.1:port to 127.0.0.1:target, delaying every chunk by `delay` seconds each way."""

    def __init__(self, target, delay):
        self.target, self.delay = target, delay
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

    async def _pipe(self, reader, writer):
        queue = asyncio.Queue()

        async def read():
            while True:
                data = await reader.read(65536)
                await queue.put((time.monotonic() + self.delay, data))
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
        await asyncio.gather(self._pipe(creader, swriter), self._pipe(sreader, cwriter))


def vm_hwm_kib(pid):
    """The process's peak resident set since it started (kernel's high-water mark)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def http_json(method, url, timeout=600):
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def node_refs(addr, owner, name):
    return http_json("GET", f"http://{addr}/api/v1/repos/{owner}/{name}")["refs"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rtt-ms", type=float, default=30.0, help="injected round-trip latency (besides 0 ms)")
    args = ap.parse_args()
    build_node()
    b = Bench()
    env = b.env
    try:
        ref_pid, ref_base = b.start_reference()
        ref_port = int(ref_base.split(":")[2].split("/")[0])
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
        a_port = int(a_p2p.split("/tcp/")[1].split("/")[0])
        a_peer = a_p2p.split("/p2p/")[1]

        results, b_peaks = [], {}
        for rtt in (0.0, args.rtt_ms):
            if rtt:
                p2p_proxy = LatencyProxy(a_port, rtt / 2000)
                http_proxy = LatencyProxy(ref_port, rtt / 2000)
                bootstrap = f"/ip4/127.0.0.1/tcp/{p2p_proxy.port}/p2p/{a_peer}"
                git_url = f"http://127.0.0.1:{http_proxy.port}/git/rg.git"
            else:
                bootstrap, git_url = a_p2p, f"{ref_base}/rg.git"
            g, r, bp = [], [], []
            for i in range(args.runs):
                name = f"b-{int(rtt)}-{i}"
                node_b, b_addr = b.start_node(name, *p2p, "--bootstrap", bootstrap)
                deadline = time.time() + 30
                while not http_json("GET", f"http://{b_addr}/api/v1/node")["connected_peers"]:
                    if time.time() > deadline:
                        sys.exit(f"node B never connected to A; see {b.tmp}/{name}.log")
                    time.sleep(0.05)
                def seed():
                    http_json("POST", f"http://{b_addr}/api/v1/repos/{b.owner}/rg/seed")

                elapsed, peak = measure(seed, [a.pid])
                b_hwm = vm_hwm_kib(node_b.pid)
                got = node_refs(b_addr, b.owner, "rg")
                if got != a_refs:
                    sys.exit(f"node B's refs differ from A's after seeding ({len(got)} vs {len(a_refs)})")
                g.append((elapsed, peak))
                bp.append(b_hwm)
                node_b.terminate()
                node_b.wait()
                shutil.rmtree(node_b.data_dir)

                dest = os.path.join(b.tmp, f"mirror-{int(rtt)}-{i}.git")

                def clone():
                    sh("git", "clone", "-q", "--mirror", git_url, dest, env=env)

                r.append(measure(clone, [ref_pid]))
                got = dict(line.split()[::-1] for line in
                           sh("git", "-C", dest, "for-each-ref", "--format=%(objectname) %(refname)",
                              env=env).stdout.splitlines())
                if got != src_refs:
                    sys.exit("the git clone's refs differ from the fixture's")
                shutil.rmtree(dest)
            label = f"{int(rtt)} ms RTT" if rtt else "0 ms"
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
