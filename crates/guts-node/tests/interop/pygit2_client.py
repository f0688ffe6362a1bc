#!/usr/bin/env python3
"""Drives pygit2 (libgit2) against a git smart-HTTP server for tests/interop.rs.

Subcommands (each prints one JSON object on stdout; "ok" says whether the
step worked, "error" why not):

  clone URL DIR                 clone_repository
  clone-shallow URL DIR DEPTH   clone_repository(depth=DEPTH)
  fetch DIR                     Remote.fetch on origin
  deepen DIR DEPTH              Remote.fetch(depth=DEPTH) on origin
  ls-refs URL --protocol 0      Remote.list_heads (libgit2 speaks only v0)
  push DIR REFSPEC [--user U --password P]
                                Remote.push with RemoteCallbacks whose
                                credentials() returns UserPass(U, P)

Results carry "refs", "head" and "shallow" as libgit2 reads them, and
"credential_calls": the URLs credentials() was called with.
"""

import json
import sys
import traceback

import pygit2


class Callbacks(pygit2.RemoteCallbacks):
    """Records credential requests and per-ref push results."""

    def __init__(self, user=None, password=None):
        super().__init__()
        self.user = user
        self.password = password
        self.credential_calls = []
        self.ref_status = {}

    def credentials(self, url, username_from_url, allowed_types):
        self.credential_calls.append(url)
        if self.user is None or len(self.credential_calls) > 3:
            raise pygit2.Passthrough
        return pygit2.UserPass(self.user, self.password)

    def push_update_reference(self, refname, message):
        self.ref_status[refname] = message


def emit(result):
    print(json.dumps(result, sort_keys=True))
    sys.exit(0 if result.get("ok") else 1)


def repo_state(path):
    repo = pygit2.Repository(path)
    refs = {}
    for name in repo.references:
        ref = repo.references[name]
        if ref.type == pygit2.enums.ReferenceType.DIRECT:
            refs[name] = str(ref.target)
    head = repo.lookup_reference("HEAD")
    head_target = head.target if head.type == pygit2.enums.ReferenceType.SYMBOLIC else None
    shallow_file = repo.path.rstrip("/") + "/shallow"
    try:
        with open(shallow_file) as f:
            shallow = sorted(line.strip() for line in f if line.strip())
    except FileNotFoundError:
        shallow = []
    return {"refs": refs, "head": head_target, "shallow": shallow}


def clone(url, path, depth=0):
    cb = Callbacks()
    pygit2.clone_repository(url, path, callbacks=cb, depth=depth)
    return dict(ok=True, credential_calls=cb.credential_calls, **repo_state(path))


def fetch(path, depth=0):
    cb = Callbacks()
    repo = pygit2.Repository(path)
    repo.remotes["origin"].fetch(callbacks=cb, depth=depth)
    return dict(ok=True, credential_calls=cb.credential_calls, **repo_state(path))


def ls_refs(url, protocol):
    if protocol != 0:
        return {"ok": False, "unsupported": True, "error": "libgit2 speaks only protocol v0"}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        repo = pygit2.init_repository(tmp, bare=True)
        remote = repo.remotes.create_anonymous(url)
        heads = remote.list_heads(callbacks=Callbacks())
        refs = {h.name: str(h.oid) for h in heads if h.name != "HEAD"}
        symrefs = {h.name: h.symref_target for h in heads if h.symref_target}
    return {"ok": True, "refs": refs, "symrefs": symrefs}


def push(path, refspec, user, password):
    cb = Callbacks(user, password)
    repo = pygit2.Repository(path)
    result = {"credential_calls": cb.credential_calls}
    try:
        repo.remotes["origin"].push([refspec], callbacks=cb)
    except Exception as e:  # noqa: BLE001 - report any failure as JSON
        result.update(ok=False, error=f"{type(e).__name__}: {e}")
    else:
        result["ok"] = bool(cb.ref_status) and all(v is None for v in cb.ref_status.values())
        if not cb.ref_status:
            result["error"] = "push_update_reference was never called"
    result["ref_status"] = cb.ref_status
    result.update(repo_state(path))
    return result


def option(args, name, default=None):
    if name in args:
        i = args.index(name)
        value = args[i + 1]
        del args[i : i + 2]
        return value
    return default


def main(argv):
    args = list(argv[1:])
    cmd = args.pop(0)
    user = option(args, "--user")
    password = option(args, "--password")
    protocol = option(args, "--protocol", "0")
    if cmd == "clone":
        return clone(args[0], args[1])
    if cmd == "clone-shallow":
        return clone(args[0], args[1], depth=int(args[2]))
    if cmd == "fetch":
        return fetch(args[0])
    if cmd == "deepen":
        return fetch(args[0], depth=int(args[1]))
    if cmd == "ls-refs":
        return ls_refs(args[0], int(protocol))
    if cmd == "push":
        return push(args[0], args[1], user, password)
    raise SystemExit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    try:
        emit(main(sys.argv))
    except Exception as e:  # noqa: BLE001 - report any failure as JSON
        emit(
            {
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "trace": traceback.format_exc(),
                "version": pygit2.__version__,
            }
        )
