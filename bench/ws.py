#!/usr/bin/env python3
"""Clone over a WebSocket (`guts://`, git-remote-guts) vs smart HTTP from the
same node vs C git's `git http-backend` (behind lighttpd), at 0 ms and
30 ms of injected round-trip time (ADR 0023).

The latency comes from a TCP proxy in this script in front of each server:
every chunk is held for half the RTT in each direction (order kept, no
bandwidth cap). Stock git clones `--bare` with protocol v2; runs alternate
between the three. Printed: median wall time per transport and RTT, the
ratios guts:// / HTTP (same node) and guts:// / git, and the node's peak RSS.

Usage: bench/ws.py [--runs N] [--cargo]   (builds guts-node --release first)
"""
import argparse, heapq, os, shutil, socket, statistics, threading, time

from benchlib import FIXTURES, NODE_BIN, Bench, build_node, machine_line, sh, timed


class DelayProxy:
    """Forward 127.0.0.1:port to `target`, delaying each chunk by `delay` seconds one way."""

    def __init__(self, target, delay):
        self.target, self.delay = target, delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            host, port = self.target.rsplit(":", 1)
            server = socket.create_connection((host, int(port)))
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.pipe(client, server)
            self.pipe(server, client)

    def pipe(self, src, dst):
        queue, cond = [], threading.Condition()
        seq = [0]

        def reader():
            while True:
                try:
                    data = src.recv(256 * 1024)
                except OSError:
                    data = b""
                with cond:
                    seq[0] += 1
                    heapq.heappush(queue, (time.monotonic() + self.delay, seq[0], data))
                    cond.notify()
                if not data:
                    return

        def writer():
            while True:
                with cond:
                    while not queue:
                        cond.wait()
                    due, _, data = queue[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        cond.wait(wait)
                        continue
                    heapq.heappop(queue)
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=reader, daemon=True).start()
        threading.Thread(target=writer, daemon=True).start()

    def close(self):
        self.sock.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cargo", action="store_true", help="clone the cargo fixture instead of ripgrep")
    args = ap.parse_args()
    build_node()
    fixture = "cargo" if args.cargo else "ripgrep"
    b = Bench(bundle=FIXTURES[fixture])
    helper_dir = os.path.dirname(NODE_BIN)
    env = dict(b.env, PATH=f"{helper_dir}:{os.environ.get('PATH', '')}")
    proxies = []
    try:
        ref_pid, ref_base = b.start_reference()
        node, addr = b.start_node("guts")
        url = b.create_repo(addr, fixture)
        sh("git", "push", "-q", "--mirror", url, cwd=b.src, env=env)
        # One clone first, untimed: the node's first clone generates the
        # pack (then cached), which would be charged to the first transport.
        sh("git", "clone", "-q", "--bare", url, os.path.join(b.tmp, "warm"), env=env)
        shutil.rmtree(os.path.join(b.tmp, "warm"))
        print(machine_line())
        rows = []
        for rtt in (0, 30):
            node_proxy = DelayProxy(addr, rtt / 2000)
            ref_proxy = DelayProxy(ref_base.split("/")[2], rtt / 2000)
            proxies += [node_proxy, ref_proxy]
            transports = (
                ("guts://", f"guts://{node_proxy.addr}/{b.owner}/{fixture}", [node.pid]),
                ("HTTP (node)", f"http://{node_proxy.addr}/{b.owner}/{fixture}.git", [node.pid]),
                ("git http-backend", f"http://{ref_proxy.addr}/git/rg.git", [ref_pid]),
            )
            times = {name: [] for name, _, _ in transports}
            peaks = {name: 0 for name, _, _ in transports}
            for i in range(args.runs):
                for name, u, pids in transports:
                    dest = os.path.join(b.tmp, f"clone-{rtt}-{i}")
                    t, peak = timed(["git", "clone", "-q", "--bare", u, dest], pids, b.tmp, env)
                    times[name].append(t)
                    peaks[name] = max(peaks[name], peak)
                    shutil.rmtree(dest)
            rows.append((rtt, times, peaks))
        print()
        print(f"clone --bare of {fixture}, {args.runs} runs each, transports alternating")
        print(f"{'RTT':>5} {'guts://':>9} {'HTTP node':>10} {'http-backend':>13} {'ws/http':>8} {'ws/git':>7}"
              f" {'node RSS ws':>12} {'node RSS http':>14}")
        for rtt, times, peaks in rows:
            ws, http, git = (statistics.median(times[k]) for k in ("guts://", "HTTP (node)", "git http-backend"))
            print(f"{rtt:>3}ms {ws:8.3f}s {http:9.3f}s {git:12.3f}s {ws / http:7.2f}x {ws / git:6.2f}x"
                  f" {peaks['guts://'] / 1024:8.1f}MiB {peaks['HTTP (node)'] / 1024:10.1f}MiB")
    finally:
        for p in proxies:
            p.close()
        b.close()


if __name__ == "__main__":
    main()
