#!/usr/bin/env python3
"""Drives dulwich against a git smart-HTTP server for tests/interop.rs.

Subcommands (each prints one JSON object on stdout; "ok" says whether the
step worked, "error" why not):

  clone URL DIR                 non-bare clone (porcelain.clone)
  clone-shallow URL DIR DEPTH   clone with depth
  fetch DIR                     fetch from origin
  deepen DIR DEPTH              fetch from origin with a larger depth
  ls-refs URL --protocol 0|2    HttpGitClient.get_refs
  push DIR REFSPEC [--user U --password P]
                                porcelain.push to origin; REFSPEC as git's
                                (":refs/heads/x" deletes)

Every result that leaves a repository carries "refs" (refname -> oid, as
dulwich reads them), "head" (HEAD's target ref, or null) and "shallow"
(the shallow commits, sorted).
"""

import io
import json
import os
import sys
import traceback


def emit(result):
    print(json.dumps(result, sort_keys=True))
    sys.exit(0 if result.get("ok") else 1)


def repo_state(path):
    from dulwich.repo import Repo

    with Repo(path) as r:
        refs = {
            k.decode(): v.decode()
            for k, v in r.get_refs().items()
            if k != b"HEAD" and v is not None
        }
        try:
            head = r.refs.get_symrefs().get(b"HEAD")
        except Exception:  # noqa: BLE001 - older layouts
            head = None
        shallow = sorted(s.decode() for s in r.get_shallow())
    return {"refs": refs, "head": head.decode() if head else None, "shallow": shallow}


def clone(url, path, depth=None):
    from dulwich import porcelain

    err = io.BytesIO()
    porcelain.clone(url, path, depth=depth, errstream=err, checkout=True)
    return dict(ok=True, **repo_state(path))


def fetch(path, depth=None):
    from dulwich import porcelain

    porcelain.fetch(path, "origin", depth=depth, errstream=io.BytesIO(), quiet=True)
    return dict(ok=True, **repo_state(path))


def ls_refs(url, protocol):
    from dulwich.client import get_transport_and_path

    client, path = get_transport_and_path(url)
    result = client.get_refs(path, protocol_version=protocol)
    refs = {k.decode(): v.decode() for k, v in result.refs.items() if v is not None}
    symrefs = {k.decode(): v.decode() for k, v in result.symrefs.items()}
    return {"ok": True, "refs": refs, "symrefs": symrefs}


def push(path, refspec, user, password):
    from dulwich import porcelain

    kwargs = {}
    if user is not None:
        kwargs = {"username": user, "password": password}
    err = io.BytesIO()
    try:
        result = porcelain.push(
            path, "origin", refspec, errstream=err, outstream=io.BytesIO(), **kwargs
        )
    except Exception as e:  # noqa: BLE001 - report any failure as JSON
        return {
            "ok": False,
            "error": f"{type(e).__name__}: {e}",
            "stderr": err.getvalue().decode(errors="replace"),
            **repo_state(path),
        }
    status = {
        k.decode(): (None if v is None else str(v))
        for k, v in (result.ref_status or {}).items()
    }
    return {
        "ok": all(v is None for v in status.values()),
        "ref_status": status,
        "stderr": err.getvalue().decode(errors="replace"),
        **repo_state(path),
    }


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
    protocol = option(args, "--protocol", "2")
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
                "version": __import__("dulwich").__version__,
            }
        )
