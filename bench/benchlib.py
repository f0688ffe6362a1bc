"""Shared pieces of the benchmarks: running commands, sampling the resident
memory of a server's process tree, starting guts-node and the reference
server (C git's `git http-backend` behind lighttpd), a signing identity, the
ripgrep fixture, and the result table."""
import os, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
BUNDLE = os.path.join(SHARED, "fixtures", "ripgrep.bundle")
REFSERVER = os.path.join(SHARED, "tools", "reference-server")
NODE_BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "guts-node")


def sh(*args, cwd=None, env=None, check=True):
    r = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(args)}\n{r.stdout}{r.stderr}")
    return r


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


def measure(action, pids):
    """Run `action()`, return (seconds, peak RSS KiB of the `pids` trees sampled every 10 ms)."""
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_kib(pids))
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


def timed(cmd, pids, cwd, env):
    """Run the command `cmd`; return (seconds, server peak RSS KiB). Exits on failure."""
    def action():
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            sys.exit(f"command failed: {' '.join(cmd)}\n{r.stderr}")
    return measure(action, pids)


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

    def __init__(self, fixture=True):
        if fixture and not os.path.exists(BUNDLE):
            print(f"SKIP: fixture missing at {BUNDLE}")
            sys.exit(0)
        self.tmp = tempfile.mkdtemp(prefix="guts-bench-")
        self.env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=self.tmp, GIT_TERMINAL_PROMPT="0")
        self.src = os.path.join(self.tmp, "src.git")
        sh("git", "init", "-q", "--bare", self.src, env=self.env)
        if fixture:
            sh("git", "-C", self.src, "fetch", "-q", BUNDLE, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*",
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
        """Start guts-node with its own data dir; returns (Popen, http address)."""
        data = os.path.join(self.tmp, name)
        os.makedirs(data, exist_ok=True)
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        node = subprocess.Popen([NODE_BIN, "run", "--data-dir", data, "--http-listen", "127.0.0.1:0", "--log", "info",
                                 *extra], stdout=subprocess.DEVNULL, stderr=log)
        self.nodes.append(node)
        addr = wait_for_file(os.path.join(data, "http.addr"), f"{name}'s HTTP address")
        node.data_dir = data
        return node, addr

    def create_repo(self, addr, name):
        """Create OWNER/name on the node at `addr`, owned by the bench identity; returns its URL."""
        sh(NODE_BIN, "repo", "create", name, "--node", f"http://{addr}", "--key", self.key, env=self.env)
        return f"http://{addr}/{self.owner}/{name}.git"

    def start_reference(self):
        """Serve a repacked mirror of the fixture (`rg.git`) with git http-backend; returns (pid, base URL)."""
        self.refroot = os.path.join(self.tmp, "ref")
        os.makedirs(self.refroot)
        rg = os.path.join(self.refroot, "rg.git")
        sh("git", "clone", "-q", "--mirror", self.src, rg, env=self.env)
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
