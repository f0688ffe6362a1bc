"""Shared pieces of the benchmarks: running commands, sampling the resident
memory and CPU time of a server's process tree, starting guts-node and the
reference server (C git's `git http-backend` behind lighttpd, optionally
prepared as git hosts run it), a signing identity, the fixtures, and the
result tables."""
import os, platform, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
BUNDLE = os.path.join(SHARED, "fixtures", "ripgrep.bundle")
FIXTURES = {name: os.path.join(SHARED, "fixtures", f"{name}.bundle") for name in ("ripgrep", "cargo")}
REFSERVER = os.path.join(SHARED, "tools", "reference-server")
NODE_BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "guts-node")


def sh(*args, cwd=None, env=None, check=True):
    r = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(args)}\n{r.stdout}{r.stderr}")
    return r


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name: [0] is the state
    (field 3 in proc(5)), [1] the ppid, [11..14] utime, stime, cutime,
    cstime in clock ticks, [19] the start time."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_kib(pid, field):
    """A KiB field of /proc/PID/status (VmRSS, VmHWM); 0 if absent."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_hwm(pid):
    """Reset the process's peak RSS (VmHWM) to its current RSS; False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid, children=True):
    """utime+stime of `pid`, plus cutime+cstime (the CPU of the children it
    has reaped, themselves including what they reaped) unless children=False."""
    f = proc_stat(pid)
    ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)
    return ticks / CLK_TCK


def descendants(pids):
    """The given pids and every live (or not yet reaped) descendant."""
    children = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            children.setdefault(int(proc_stat(p)[1]), []).append(int(p))
        except (OSError, IndexError, ValueError):
            pass
    stack, seen = list(pids), []
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.append(p)
        stack.extend(children.get(p, []))
    return seen


def tree_rss_kib(pids):
    """Sum of VmRSS over the given pids and all their descendants."""
    return sum(proc_kib(p, "VmRSS") for p in descendants(pids))


def wait_reaped(pid, secs=30):
    """Wait until `pid` has no child left (so their CPU is in its cutime/cstime)."""
    deadline = time.time() + secs
    while len(descendants([pid])) > 1:
        if time.time() > deadline:
            sys.exit(f"children of {pid} still running after {secs} s")
        time.sleep(0.01)


def measure(action, pids, cpu_seen=None):
    """Run `action()`, return (seconds, peak RSS KiB of the `pids` trees sampled every 10 ms).
    With a dict `cpu_seen`, also record in it the last utime+stime seen of
    every descendant (not the `pids` themselves), keyed by (pid, start time):
    a lower bound of their CPU, since a process's last 10 ms go unseen."""
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            total = 0
            for p in descendants(pids):
                total += proc_kib(p, "VmRSS")
                if cpu_seen is not None and p not in pids:
                    try:
                        f = proc_stat(p)
                        cpu_seen[(p, f[19])] = (int(f[11]) + int(f[12])) / CLK_TCK
                    except (OSError, IndexError, ValueError):
                        pass
            peak[0] = max(peak[0], total)
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    start = time.perf_counter()
    try:
        action()
    finally:
        elapsed = time.perf_counter() - start
        done.set()
        t.join()
    return elapsed, peak[0]


def timed(cmd, pids, cwd, env, cpu_seen=None):
    """Run the command `cmd`; return (seconds, server peak RSS KiB). Exits on failure."""
    def action():
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            sys.exit(f"command failed: {' '.join(cmd)}\n{r.stderr}")
    return measure(action, pids, cpu_seen)


def run_concurrent(cmds, cwd, env):
    """Start every command at once and wait for all; exits if one fails."""
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    errors = [(c, p.communicate()[1]) for c, p in zip(cmds, procs)]
    failed = [(c, e) for (c, e), p in zip(errors, procs) if p.returncode != 0]
    if failed:
        sys.exit(f"{len(failed)} of {len(cmds)} commands failed, first: {' '.join(failed[0][0])}\n{failed[0][1]}")


def host_prepare(repo, env):
    """Prepare a bare repository as git hosts serve one: a single pack with a
    reachability bitmap (and its name-hash cache), a commit-graph, packed
    refs, partial clone allowed; maintenance is run out of band (no auto gc
    on push), as it is here."""
    for key, value in (("uploadpack.allowFilter", "true"), ("uploadpack.allowReachableSHA1InWant", "true"),
                       ("pack.writeBitmapHashCache", "true"), ("repack.writeBitmaps", "true"),
                       ("core.commitGraph", "true"), ("receive.autogc", "false"), ("gc.auto", "0")):
        sh("git", "-C", repo, "config", key, value, env=env)
    maintain_reference(repo, env)


def maintain_reference(repo, env):
    """What a git host's maintenance does: repack everything into one pack
    with a bitmap, write the commit-graph, pack the refs."""
    sh("git", "-C", repo, "-c", "pack.writeBitmapHashCache=true", "repack", "-adbq", env=env)
    sh("git", "-C", repo, "commit-graph", "write", "--reachable", "--no-progress", env=env)
    sh("git", "-C", repo, "pack-refs", "--all", env=env)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for_file(path, what, secs=30):
    deadline = time.time() + secs
    while not (os.path.exists(path) and os.path.getsize(path) > 0):
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what} ({path})")
        time.sleep(0.05)
    with open(path) as f:
        return f.read().strip()


def build_node():
    print("building guts-node (release)...", flush=True)
    sh("cargo", "build", "--release", "-q", "-p", "guts-node", cwd=ROOT)


class Bench:
    """A scratch directory with a git environment, the fixture as a bare
    repository (`src`), and a signing identity (`key`, `owner`)."""

    def __init__(self, fixture=True, bundle=BUNDLE):
        if fixture and not os.path.exists(bundle):
            print(f"SKIP: fixture missing at {bundle}")
            sys.exit(0)
        self.tmp = tempfile.mkdtemp(prefix="guts-bench-")
        self.env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=self.tmp, GIT_TERMINAL_PROMPT="0")
        self.src = os.path.join(self.tmp, "src.git")
        sh("git", "init", "-q", "--bare", self.src, env=self.env)
        if fixture:
            sh("git", "-C", self.src, "fetch", "-q", bundle, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*",
               env=self.env)
        # The identity that owns the benchmark repositories and signs pushes.
        self.user = os.path.join(self.tmp, "user")
        self.key = os.path.join(self.user, "identity", "id_ed25519")
        sh(NODE_BIN, "id", "new", "--data-dir", self.user, env=self.env)
        self.owner = sh(NODE_BIN, "id", "show", "--data-dir", self.user, env=self.env).stdout.split("owner id")[1].split()[0]
        # git signs pushes whenever a server asks (guts-node always does; the
        # reference repositories are configured to ask too, so both sides pay
        # for the signature).
        sh(NODE_BIN, "git-setup", "--repo", self.src, "--key", self.key, env=self.env)
        self.nodes = []
        self.refroot = None

    def start_node(self, name, *extra):
        """Start guts-node with its own data dir; returns (Popen, http address).
        Without --p2p-listen in `extra` the node does not replicate (--no-p2p)."""
        data = os.path.join(self.tmp, name)
        os.makedirs(data, exist_ok=True)
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        # Nodes replicate by default (default port, mDNS): a benchmark node
        # peers only when asked to (--p2p-listen).
        p2p = [] if "--p2p-listen" in extra else ["--no-p2p"]
        level = [] if "--log" in extra else ["--log", "info"]
        node = subprocess.Popen([NODE_BIN, "run", "--data-dir", data, "--http-listen", "127.0.0.1:0", *level,
                                 *p2p, *extra], stdout=subprocess.DEVNULL, stderr=log)
        self.nodes.append(node)
        addr = wait_for_file(os.path.join(data, "http.addr"), f"{name}'s HTTP address")
        node.data_dir = data
        return node, addr

    def create_repo(self, addr, name):
        """Create OWNER/name on the node at `addr`, owned by the bench identity; returns its URL."""
        sh(NODE_BIN, "repo", "create", name, "--node", f"http://{addr}", "--key", self.key, env=self.env)
        return f"http://{addr}/{self.owner}/{name}.git"

    def start_reference(self, name="rg", hosted=False, mirror=True):
        """Serve a repacked mirror of the fixture (`NAME.git`; none if not
        `mirror`) with git http-backend; returns (pid, base URL). `hosted`:
        prepared as git hosts run it (`host_prepare`)."""
        self.refroot = os.path.join(self.tmp, "ref")
        os.makedirs(self.refroot)
        if mirror:
            rg = os.path.join(self.refroot, f"{name}.git")
            sh("git", "clone", "-q", "--mirror", self.src, rg, env=self.env)
            if hosted:
                host_prepare(rg, self.env)
            else:
                sh("git", "-C", rg, "repack", "-adq", env=self.env)
        port = free_port()
        sh(REFSERVER, "start", self.refroot, str(port))
        pid = int(wait_for_file(os.path.join(self.refroot, ".reference-server", "pid"), "lighttpd's pid"))
        return pid, f"http://127.0.0.1:{port}/git"

    def reference_repo(self, name):
        """An empty bare repository on the reference server that asks for signed pushes."""
        path = os.path.join(self.refroot, f"{name}.git")
        sh("git", "init", "-q", "--bare", path, env=self.env)
        sh("git", "-C", path, "config", "receive.certNonceSeed", "bench", env=self.env)
        return path

    def close(self):
        for node in self.nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
                node.wait()
        if self.refroot:
            subprocess.run([REFSERVER, "stop", self.refroot])
        shutil.rmtree(self.tmp, ignore_errors=True)


def table(results, runs, note):
    """Print scenario, medians, ratio and peak memory; `results` holds (name, guts [(s, KiB)], git [(s, KiB)])."""
    print()
    print(f"{'scenario':44} {'guts median':>12} {'git median':>12} {'ratio':>7} {'guts peak RSS':>14} {'git peak RSS':>13}")
    for name, g, r in results:
        gm = statistics.median(t for t, _ in g)
        rm = statistics.median(t for t, _ in r)
        gp = max(m for _, m in g) / 1024
        rp = max(m for _, m in r) / 1024
        print(f"{name:44} {gm:11.3f}s {rm:11.3f}s {gm / rm:6.2f}x {gp:11.1f}MiB {rp:10.1f}MiB")
    print(f"\n{runs} runs each. {note}")


def machine_line():
    """Cores, CPU model, kernel, git version and date, for the record beside the numbers."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
    except OSError:
        pass
    git = sh("git", "--version").stdout.strip()
    return (f"machine: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {model}, "
            f"Linux {platform.release()}, {git}, {time.strftime('%Y-%m-%d %H:%M %Z')}")


UNITS = {"s": lambda v: f"{v:.3f} s", "cpu": lambda v: f"{v:.3f} s CPU", "rate": lambda v: f"{v:.2f}/s",
         "MiB": lambda v: f"{v:.1f} MiB"}


def metric_table(rows, note):
    """Print rows of (scenario, unit, guts values, git values, guts peak RSS KiB or None, git peak RSS KiB or None):
    the median of each side's values (unit one of UNITS), the ratio guts/git, and the peaks."""
    def mib(kib):
        return "-" if kib is None else f"{kib / 1024:.1f} MiB"

    w = max([len(r[0]) for r in rows] + [8])
    print()
    print(f"{'scenario':{w}} {'guts median':>14} {'git median':>14} {'ratio':>7} {'guts peak RSS':>14} {'git peak RSS':>13}")
    for name, unit, g, r, gp, rp in rows:
        gm, rm = statistics.median(g), statistics.median(r)
        ratio = f"{gm / rm:6.2f}x" if rm else "    n/a"
        print(f"{name:{w}} {UNITS[unit](gm):>14} {UNITS[unit](rm):>14} {ratio:>7} {mib(gp):>14} {mib(rp):>13}")
    print(f"\n{note}")
