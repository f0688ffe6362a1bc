#!/usr/bin/env python3
"""Serving and ingest costs of guts-node beside C git's `git http-backend`
(behind lighttpd, prepared as git hosts run it), in the same run, on the
ripgrep or cargo fixture.

Scenarios (`--only` takes their numbers or names, comma-separated):
  1 cpu         server CPU seconds of one full clone (v2 `git clone --bare`)
  2 concurrent  --concurrency full-clone serves at once (curl): wall time, serves/s, server peak RSS
  3 rss         one full clone: server peak RSS above its idle RSS
  4 push        signed `git push --mirror` of the fixture into an empty repository
  5 haves       one v2 fetch round with 1,000 `have` lines the server does not know
  6 noop        `git fetch` in an up-to-date mirror clone
  7 churn       a clone after --pushes small signed pushes, before and after maintenance

The servers alternate run by run (guts, then git); each scenario reports
medians, the ratio guts/git and the server's peak RSS (guts-node's process;
lighttpd and its CGI children for git, sampled every 10 ms).

The node's copy of the fixture comes from a signed `git push --mirror`, then
`guts-node repo maintain`; the reference copy is a mirror clone repacked
with a bitmap (and name-hash cache), a commit-graph and packed refs
(benchlib.host_prepare). The node runs with its per-client limits lifted
(every client here is 127.0.0.1): no request-rate limit, 1024 connections
per client, 600 s queue timeout; its cap on concurrent pack generations
keeps its default. Background maintenance is off: the script maintains
both sides at the same points.

Usage: bench/serve.py [--fixture ripgrep|cargo] [--runs N] [--concurrency N]
                      [--pushes N] [--only 1,5|cpu,haves] [--no-build]
"""
import argparse, json, os, random, resource, shutil, statistics, subprocess, sys, time, urllib.request

import benchlib
from benchlib import (Bench, build_node, cpu_seconds, host_prepare, machine_line, maintain_reference, measure,
                      metric_table, proc_kib, reset_hwm, run_concurrent, sh, timed, tree_rss_kib, wait_reaped)

SCENARIOS = ["cpu", "concurrent", "rss", "push", "haves", "noop", "churn"]
NODE_FLAGS = ["--rate-limit", "0", "--max-connections-per-client", "1024", "--queue-timeout", "600",
              "--no-auto-maintenance"]
HAVES = 1000


class Side:
    """One server: its label, the pid whose tree is measured, and how to name its repositories."""

    def __init__(self, label, pid, url_of):
        self.label, self.pid, self.url_of = label, pid, url_of

    def url(self, name):
        return self.url_of(name)


class Ctx:
    """Both servers, the bench identity, and the serving repositories (made on first use)."""

    def __init__(self, args, b):
        self.args, self.b, self.env, self.runs = args, b, b.env, args.runs
        self.node, self.addr = b.start_node("guts", *NODE_FLAGS)
        self.ref_pid, self.ref_base = b.start_reference(mirror=False)
        self.guts = Side("guts", self.node.pid, lambda name: f"http://{self.addr}/{b.owner}/{name}.git")
        self.git = Side("git", self.ref_pid, lambda name: f"{self.ref_base}/{name}.git")
        self.sides = [self.guts, self.git]
        self.rows = []
        self.n = 0
        self.has_maintain = sh(benchlib.NODE_BIN, "repo", "maintain", "--help", env=self.env, check=False).returncode == 0
        if not self.has_maintain:
            print("note: guts-node has no `repo maintain`; node measured unmaintained", flush=True)
        self.serving = False

    def scratch(self, what):
        """A fresh path in the scratch directory."""
        self.n += 1
        return os.path.join(self.b.tmp, f"{what}-{self.n}")

    def serve(self):
        """The fixture on both servers as `serve` (node: signed push --mirror, then maintained)."""
        if not self.serving:
            b = self.b
            t = time.perf_counter()
            sh("git", "push", "-q", "--mirror", b.create_repo(self.addr, "serve"), cwd=b.src, env=self.env)
            print(f"setup: node filled by push --mirror in {time.perf_counter() - t:.1f} s", flush=True)
            m = self.maintain_node("serve")
            if m is not None:
                print(f"setup: node `repo maintain` took {m:.1f} s", flush=True)
            t = time.perf_counter()
            ref = os.path.join(b.refroot, "serve.git")
            sh("git", "clone", "-q", "--mirror", b.src, ref, env=self.env)
            host_prepare(ref, self.env)
            print(f"setup: reference mirrored and prepared (bitmap, commit-graph) in {time.perf_counter() - t:.1f} s",
                  flush=True)
            self.serving = True
        return "serve"

    def maintain_node(self, name):
        """`guts-node repo maintain` on OWNER/NAME; its wall time, or None if the command does not exist."""
        if not self.has_maintain:
            return None
        t = time.perf_counter()
        sh(benchlib.NODE_BIN, "repo", "maintain", f"{self.b.owner}/{name}", "--node", f"http://{self.addr}",
           "--data-dir", self.node.data_dir, "--key", self.b.key, env=self.env)
        return time.perf_counter() - t

    def node_repo(self, name):
        """GET /api/v1/repos/OWNER/NAME as a dict."""
        with urllib.request.urlopen(f"http://{self.addr}/api/v1/repos/{self.b.owner}/{name}", timeout=60) as r:
            return json.load(r)

    def clone_cmd(self, url, dest):
        return ["git", "-c", "protocol.version=2", "clone", "-q", "--bare", url, dest]

    def add(self, name, unit, vals, peaks=None):
        """A table row; `vals`/`peaks` map side label to a list of values / of peak RSS KiB."""
        peaks = peaks or {}
        self.rows.append((name, unit, vals["guts"], vals["git"],
                          max(peaks["guts"]) if peaks.get("guts") else None,
                          max(peaks["git"]) if peaks.get("git") else None))


def per_side():
    return {"guts": [], "git": []}


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def local_pack_cpu(ctx, repo):
    """CPU seconds of `git pack-objects` packing every tip of `repo` run
    directly (what upload-pack asks of it for a clone), from getrusage."""
    tips = sh("git", "-C", repo, "for-each-ref", "--format=%(objectname)", env=ctx.env).stdout
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(["git", "-C", repo, "pack-objects", "--revs", "--stdout", "--thin", "--delta-base-offset",
                        "--include-tag", "--use-bitmap-index", "-q"], input=tips.encode(), env=ctx.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit(f"git pack-objects failed: {r.stderr.decode()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def scenario_cpu(ctx):
    """1: CPU seconds the server spends on one full clone. guts: the node's
    utime+stime. git: lighttpd's utime+stime+cutime+cstime, read once every
    CGI child (http-backend, upload-pack, pack-objects) is reaped; checked
    against the CPU seen by sampling those children while they ran, and
    against `git pack-objects` run directly for the same tips."""
    name = ctx.serve()
    cpu, peaks = per_side(), per_side()
    for i in range(ctx.runs):
        for s in ctx.sides:
            dest = ctx.scratch(f"cpu-{s.label}")
            wait_reaped(s.pid)
            self0, all0 = cpu_seconds(s.pid, children=False), cpu_seconds(s.pid)
            seen = {}
            secs, peak = timed(ctx.clone_cmd(s.url(name), dest), [s.pid], ctx.b.tmp, ctx.env, cpu_seen=seen)
            wait_reaped(s.pid)
            time.sleep(0.05)
            self1, all1 = cpu_seconds(s.pid, children=False), cpu_seconds(s.pid)
            shutil.rmtree(dest)
            total, children, sampled = all1 - all0, (all1 - self1) - (all0 - self0), sum(seen.values())
            cpu[s.label].append(total)
            peaks[s.label].append(peak)
            print(f"cpu run {i + 1} {s.label}: {total:.2f} s CPU ({self1 - self0:.2f} s in the server process, "
                  f"{children:.2f} s in reaped children; sampling saw >= {sampled:.2f} s in children), "
                  f"clone wall {secs:.2f} s", flush=True)
            if s is ctx.git and (total <= 0 or children + 0.02 < 0.9 * sampled):
                print("WARNING: git's CPU looks wrong: the children's CPU counted in cutime/cstime is below what "
                      "sampling saw", flush=True)
    local = local_pack_cpu(ctx, os.path.join(ctx.b.refroot, name + ".git"))
    print(f"cpu check: `git pack-objects` of every tip, run directly on the reference repository, takes {local:.2f} s "
          f"CPU; git's median above is {statistics.median(cpu['git']):.2f} s", flush=True)
    if statistics.median(cpu["git"]) < 0.5 * local:
        print("WARNING: git's CPU is well below what its pack-objects alone needs: children's CPU may be missed",
              flush=True)
    ctx.add("1. server CPU, one full clone (v2)", "cpu", cpu, peaks)


def full_fetch_body(src, env):
    """A v2 fetch of every branch and tag (what `git clone` asks for), with
    `done`: the request a clone sends once it has the refs."""
    tips = sorted(set(sh("git", "-C", src, "for-each-ref", "--format=%(objectname)", "refs/heads", "refs/tags",
                         env=env).stdout.split()))
    return (pkt("command=fetch\n") + pkt("agent=guts-bench\n") + b"0001"
            + b"".join(pkt(f"{arg}\n") for arg in ("thin-pack", "no-progress", "ofs-delta", "include-tag"))
            + b"".join(pkt(f"want {t}\n") for t in tips) + pkt("done\n") + b"0000")


def scenario_concurrent(ctx):
    """2: --concurrency full-clone serves at once: the v2 fetch request of a
    clone of every branch and tag POSTed by `curl`, the pack read and
    discarded. This measures the server, not the clients: N `git clone`s
    on the same 2 cores would spend their time indexing packs."""
    name, n = ctx.serve(), ctx.args.concurrency
    body_path = ctx.scratch("full-fetch-body")
    with open(body_path, "wb") as f:
        f.write(full_fetch_body(ctx.b.src, ctx.env))
    wall, peaks = per_side(), per_side()
    for i in range(ctx.runs):
        for s in ctx.sides:
            outs = [ctx.scratch(f"conc-{s.label}-{k}") for k in range(n)]
            cmds = [["curl", "-sf", "-o", o, "--data-binary", f"@{body_path}",
                     "-H", "Content-Type: application/x-git-upload-pack-request",
                     "-H", "Git-Protocol: version=2", f"{s.url(name)}/git-upload-pack"] for o in outs]
            secs, peak = measure(lambda: run_concurrent(cmds, ctx.b.tmp, ctx.env), [s.pid])
            sizes = sorted(os.path.getsize(o) for o in outs)
            for o in outs:
                os.remove(o)
            wall[s.label].append(secs)
            peaks[s.label].append(peak)
            print(f"concurrent run {i + 1} {s.label}: {n} serves in {secs:.2f} s ({n / secs:.2f} serves/s), "
                  f"response {sizes[0] / 2**20:.1f}-{sizes[-1] / 2**20:.1f} MiB, server peak RSS {mib(peak)}",
                  flush=True)
    ctx.add(f"2. {n} concurrent full-clone serves: wall", "s", wall, peaks)
    ctx.add(f"2. {n} concurrent full-clone serves: throughput", "rate",
            {k: [n / w for w in v] for k, v in wall.items()})


def scenario_rss(ctx):
    """3: one full clone; the server's peak RSS above its RSS just before.
    guts: max of sampling and VmHWM (reset through clear_refs just before);
    git: lighttpd's tree, sampled (short-lived children may be missed)."""
    name = ctx.serve()
    above, peaks = per_side(), per_side()
    for i in range(ctx.runs):
        for s in ctx.sides:
            dest = ctx.scratch(f"rss-{s.label}")
            wait_reaped(s.pid)
            time.sleep(0.2)
            idle = tree_rss_kib([s.pid])
            hwm = s is ctx.guts and reset_hwm(s.pid)
            secs, peak = timed(ctx.clone_cmd(s.url(name), dest), [s.pid], ctx.b.tmp, ctx.env)
            if hwm:
                peak = max(peak, proc_kib(s.pid, "VmHWM"))
            shutil.rmtree(dest)
            above[s.label].append((peak - idle) / 1024)
            peaks[s.label].append(peak)
            print(f"rss run {i + 1} {s.label}: idle {mib(idle)}, peak {mib(peak)}, above idle {mib(peak - idle)}, "
                  f"clone wall {secs:.2f} s", flush=True)
    ctx.add("3. one full clone: peak RSS above idle", "MiB", above, peaks)


def scenario_push(ctx):
    """4: signed `git push --mirror` of the fixture into a fresh empty repository."""
    b = ctx.b
    wall, peaks = per_side(), per_side()
    for i in range(ctx.runs):
        for s in ctx.sides:
            repo = f"ingest{i}"
            if s is ctx.guts:
                b.create_repo(ctx.addr, repo)
            else:
                b.reference_repo(repo)
            idle = tree_rss_kib([s.pid])
            split = {}
            if s is ctx.guts:
                split = sample_split(s.pid)
            secs, peak = timed(["git", "push", "-q", "--mirror", s.url(repo)], [s.pid], b.src, ctx.env)
            wall[s.label].append(secs)
            peaks[s.label].append(peak)
            detail = ""
            if split:
                split["stop"] = True
                split["thread"].join()
                detail = (f" (before: {mib(idle)}; peak heap {mib(split['anon'])}, peak file pages mapped "
                          f"{mib(split['file'])}: the pack being indexed)")
            print(f"push run {i + 1} {s.label}: {secs:.2f} s, server peak RSS {mib(peak)}{detail}", flush=True)
    ctx.add("4. push --mirror into an empty repo (signed)", "s", wall, peaks)


def sample_split(pid):
    """Sample a process's RssAnon and RssFile peaks every 5 ms in a thread
    until `split["stop"]` is set: what of its RSS is heap, what mapped files."""
    import threading
    split = {"anon": 0, "file": 0, "stop": False}

    def run():
        while not split["stop"]:
            split["anon"] = max(split["anon"], proc_kib(pid, "RssAnon"))
            split["file"] = max(split["file"], proc_kib(pid, "RssFile"))
            time.sleep(0.005)

    split["thread"] = threading.Thread(target=run)
    split["thread"].start()
    return split


def pkt(line):
    data = line.encode() if isinstance(line, str) else line
    return b"%04x" % (len(data) + 4) + data


def read_pkts(body):
    """Decode pkt-lines: a list of str lines, with "0000"/"0001"/"0002" for the special packets."""
    out, i = [], 0
    while i + 4 <= len(body):
        try:
            n = int(body[i:i + 4], 16)
        except ValueError:
            return out + [f"<not a pkt-line: {body[i:i + 40]!r}>"]
        if n < 4:
            out.append(f"{n:04d}")
            i += 4
            continue
        out.append(body[i + 4:i + n].decode(errors="replace").rstrip("\n"))
        i += n
    return out


def default_branch(src, env):
    heads = sh("git", "-C", src, "for-each-ref", "--format=%(refname)", "refs/heads", env=env).stdout.split()
    for want in ("refs/heads/master", "refs/heads/main"):
        if want in heads:
            return want
    return heads[0]


def scenario_haves(ctx):
    """5: a v2 `command=fetch` POSTed by hand: thin-pack, no-progress,
    ofs-delta (as git sends), want the default branch's tip, 1,000 `have`
    lines naming objects nobody has, no `done`. Both servers
    must answer with an `acknowledgments` section holding NAK, and no pack."""
    name, env = ctx.serve(), ctx.env
    tip = sh("git", "-C", ctx.b.src, "rev-parse", default_branch(ctx.b.src, env), env=env).stdout.strip()
    rng = random.Random(1000)
    # The arguments git's own fetch sends, then the wants and haves.
    body = (pkt("command=fetch\n") + pkt("agent=guts-bench\n") + b"0001"
            + b"".join(pkt(f"{arg}\n") for arg in ("thin-pack", "no-progress", "ofs-delta")) + pkt(f"want {tip}\n")
            + b"".join(pkt(f"have {rng.getrandbits(160):040x}\n") for _ in range(HAVES)) + b"0000")
    reps = max(5, ctx.runs)
    wall, peaks = per_side(), per_side()
    for i in range(reps):
        for s in ctx.sides:
            answer = []

            def post():
                req = urllib.request.Request(f"{s.url(name)}/git-upload-pack", data=body, method="POST", headers={
                    "Content-Type": "application/x-git-upload-pack-request", "Git-Protocol": "version=2",
                    "Accept": "application/x-git-upload-pack-result"})
                with urllib.request.urlopen(req, timeout=600) as r:
                    answer.append(r.read())

            secs, peak = measure(post, [s.pid])
            lines = read_pkts(answer[0])
            if not lines or lines[0] != "acknowledgments" or "NAK" not in lines or "packfile" in lines:
                sys.exit(f"{s.label} did not answer the 1,000 haves with acknowledgments/NAK: {lines[:6]}")
            wall[s.label].append(secs)
            peaks[s.label].append(peak)
            if i == 0:
                print(f"haves {s.label}: request {len(body)} bytes, answer {lines} ({len(answer[0])} bytes), "
                      f"{secs * 1000:.1f} ms", flush=True)
    print(f"haves: {reps} rounds each; medians guts {statistics.median(wall['guts']) * 1000:.1f} ms, "
          f"git {statistics.median(wall['git']) * 1000:.1f} ms", flush=True)
    ctx.add(f"5. fetch round, {HAVES:,} unknown haves (v2)", "s", wall, peaks)


def scenario_noop(ctx):
    """6: `git fetch` in a mirror clone that is already up to date."""
    name = ctx.serve()
    dests = {}
    for s in ctx.sides:
        dests[s.label] = ctx.scratch(f"noop-{s.label}")
        sh("git", "-c", "protocol.version=2", "clone", "-q", "--mirror", s.url(name), dests[s.label], env=ctx.env)
    reps = max(5, ctx.runs)
    wall, peaks = per_side(), per_side()
    for i in range(reps):
        for s in ctx.sides:
            secs, peak = timed(["git", "-c", "protocol.version=2", "fetch", "-q"], [s.pid], dests[s.label], ctx.env)
            wall[s.label].append(secs)
            peaks[s.label].append(peak)
    for d in dests.values():
        shutil.rmtree(d)
    print(f"noop: {reps} fetches each; medians guts {statistics.median(wall['guts']) * 1000:.1f} ms, "
          f"git {statistics.median(wall['git']) * 1000:.1f} ms", flush=True)
    ctx.add("6. no-op fetch (up to date, v2)", "s", wall, peaks)


def churn_commits(ctx, work, base, n):
    """`n` commits on top of `base` in `work`, each changing one file (bench-churn.txt); their ids, oldest first."""
    stream = []
    for k in range(n):
        msg, content = f"churn {k + 1}\n", f"churn {k + 1}\n" * 4
        stream.append(f"commit refs/heads/churn\nmark :{k + 1}\n"
                      f"committer Bench <bench@example.com> {1700000000 + 60 * k} +0000\n"
                      f"data {len(msg)}\n{msg}")
        if k == 0:
            stream.append(f"from {base}\n")
        stream.append(f"M 100644 inline bench-churn.txt\ndata {len(content)}\n{content}\n")
    r = subprocess.run(["git", "-C", work, "fast-import", "--quiet"], input="".join(stream), text=True,
                       env=ctx.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit(f"git fast-import failed:\n{r.stderr}")
    return sh("git", "-C", work, "rev-list", "--reverse", f"{base}..refs/heads/churn", env=ctx.env).stdout.split()


def churn_state(ctx, repo_path):
    """What each side's storage looks like: the node's pack count (if the API says), git's loose objects and packs."""
    detail = ctx.node_repo("churn")
    node = (f"{detail['packs']} packs" if "packs" in detail else "no `packs` field in the API") + \
        f", {detail.get('object_count', '?')} objects in packs, {detail.get('size_bytes', 0) / 1024:.0f} KiB"
    counts = sh("git", "-C", repo_path, "count-objects", "-v", env=ctx.env).stdout.splitlines()
    co = dict(l.split(": ", 1) for l in counts)
    return f"guts: {node}; git: {co['count']} loose objects, {co['packs']} packs"


def churn_clones(ctx, name, label):
    wall, peaks = per_side(), per_side()
    for i in range(ctx.runs):
        for s in ctx.sides:
            dest = ctx.scratch(f"churn-clone-{s.label}")
            secs, peak = timed(ctx.clone_cmd(s.url(name), dest), [s.pid], ctx.b.tmp, ctx.env)
            shutil.rmtree(dest)
            wall[s.label].append(secs)
            peaks[s.label].append(peak)
    print(f"churn: clone {label}: medians guts {statistics.median(wall['guts']):.3f} s, "
          f"git {statistics.median(wall['git']):.3f} s", flush=True)
    return wall, peaks


def scenario_churn(ctx):
    """7: a small base, then --pushes signed pushes of one commit each (one
    file changed), one at a time to refs/heads/main; a clone before and
    after maintenance (node: `repo maintain`; git: repack -adb with bitmap,
    commit-graph). git keeps its defaults for small pushes (under
    receive.unpackLimit=100 objects they are stored loose) and runs no
    auto gc (receive.autogc=false, as hosts maintain out of band)."""
    b, env, n = ctx.b, ctx.env, ctx.args.pushes
    work = ctx.scratch("churn-work")
    sh("git", "clone", "-q", "--bare", b.src, work, env=env)
    sh(benchlib.NODE_BIN, "git-setup", "--repo", work, "--key", b.key, env=env)
    history = sh("git", "-C", work, "rev-list", "--first-parent", "--reverse", default_branch(b.src, env),
                 env=env).stdout.split()
    base = history[min(199, len(history) - 1)]
    base_objects = len(sh("git", "-C", work, "rev-list", "--objects", base, env=env).stdout.splitlines())
    shas = churn_commits(ctx, work, base, n)
    b.create_repo(ctx.addr, "churn")
    ref = b.reference_repo("churn")
    sh("git", "-C", ref, "symbolic-ref", "HEAD", "refs/heads/main", env=env)
    sh("git", "-C", ref, "config", "receive.autogc", "false", env=env)
    for s in ctx.sides:
        secs, _ = timed(["git", "push", "-q", s.url("churn"), f"{base}:refs/heads/main"], [s.pid], work, env)
        print(f"churn: base ({base[:12]}, commit {len(history[:200])} of the default branch, {base_objects} objects) "
              f"pushed to {s.label} in {secs:.2f} s", flush=True)
    wall, peaks = per_side(), per_side()
    for sha in shas:
        for s in ctx.sides:
            secs, peak = timed(["git", "push", "-q", s.url("churn"), f"{sha}:refs/heads/main"], [s.pid], work, env)
            wall[s.label].append(secs)
            peaks[s.label].append(peak)
    print(f"churn: {n} pushes took guts {sum(wall['guts']):.1f} s, git {sum(wall['git']):.1f} s", flush=True)
    ctx.add(f"7. one small signed push (median of {n})", "s", wall, peaks)
    print(f"churn: before maintenance: {churn_state(ctx, ref)}", flush=True)
    w, p = churn_clones(ctx, "churn", "before maintenance")
    ctx.add(f"7. clone after {n} pushes, unmaintained", "s", w, p)
    m = ctx.maintain_node("churn")
    t = time.perf_counter()
    maintain_reference(ref, env)
    print(f"churn: maintenance took guts {'(none)' if m is None else f'{m:.2f} s'}, "
          f"git {time.perf_counter() - t:.2f} s", flush=True)
    print(f"churn: after maintenance: {churn_state(ctx, ref)}", flush=True)
    w, p = churn_clones(ctx, "churn", "after maintenance")
    label = f"7. clone after {n} pushes, maintained" + ("" if ctx.has_maintain else " (guts: unmaintained)")
    ctx.add(label, "s", w, p)
    # The baseline of "within 10%": the same history pushed at once to a
    # fresh repository (one pack, as a first push leaves it).
    b.create_repo(ctx.addr, "churn-fresh")
    fresh = b.reference_repo("churn-fresh")
    sh("git", "-C", fresh, "symbolic-ref", "HEAD", "refs/heads/main", env=env)
    for s in ctx.sides:
        sh("git", "push", "-q", s.url("churn-fresh"), f"{shas[-1]}:refs/heads/main", cwd=work, env=env)
    w, p = churn_clones(ctx, "churn-fresh", "the same history pushed at once")
    ctx.add("7. clone of the same history pushed at once", "s", w, p)


RUNNERS = {"cpu": scenario_cpu, "concurrent": scenario_concurrent, "rss": scenario_rss, "push": scenario_push,
           "haves": scenario_haves, "noop": scenario_noop, "churn": scenario_churn}


def parse_only(text):
    if not text:
        return list(SCENARIOS)
    chosen = []
    for item in text.split(","):
        item = item.strip()
        name = SCENARIOS[int(item) - 1] if item.isdigit() and 1 <= int(item) <= len(SCENARIOS) else item
        if name not in SCENARIOS:
            sys.exit(f"unknown scenario {item!r}; choose from 1-{len(SCENARIOS)} or {', '.join(SCENARIOS)}")
        chosen.append(name)
    return [s for s in SCENARIOS if s in chosen]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixture", choices=sorted(benchlib.FIXTURES), default="ripgrep")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--pushes", type=int, default=500)
    ap.add_argument("--only", help="scenarios to run, by number or name: " + ",".join(SCENARIOS))
    ap.add_argument("--no-build", action="store_true", help="use the existing release build")
    args = ap.parse_args()
    chosen = parse_only(args.only)
    bundle = benchlib.FIXTURES[args.fixture]
    if not os.path.exists(bundle):
        print(f"SKIP: fixture missing at {bundle}")
        return
    if not args.no_build:
        build_node()
    print(machine_line(), flush=True)
    print(f"fixture: {args.fixture}; scenarios: {', '.join(chosen)}; runs {args.runs}, "
          f"concurrency {args.concurrency}, pushes {args.pushes}", flush=True)
    b = Bench(bundle=bundle)
    try:
        ctx = Ctx(args, b)
        for name in chosen:
            print(f"== {SCENARIOS.index(name) + 1}. {name}", flush=True)
            RUNNERS[name](ctx)
        metric_table(ctx.rows, f"fixture {args.fixture}; servers alternate (guts, git); runs per server: {args.runs}, "
                     f"{max(5, args.runs)} for 5 and 6, one per push for the push row of 7. Ratio guts/git. "
                     "Peak RSS: guts-node's "
                     "process; lighttpd and its CGI children for git, sampled every 10 ms (a lower bound)."
                     + ("" if ctx.has_maintain else " guts-node measured unmaintained (no `repo maintain`)."))
        print(machine_line())
    finally:
        b.close()


if __name__ == "__main__":
    main()
