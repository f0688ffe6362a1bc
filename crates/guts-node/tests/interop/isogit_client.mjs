#!/usr/bin/env node
// Drives isomorphic-git against a git smart-HTTP server for tests/interop.rs.
//
// Subcommands (each prints one JSON object on stdout; "ok" says whether the
// step worked, "error" why not):
//
//   clone URL DIR                 git.clone (all branches, tags)
//   clone-shallow URL DIR DEPTH   git.clone with depth
//   fetch DIR                     git.fetch from origin
//   deepen DIR DEPTH              git.fetch from origin with depth
//   ls-refs URL --protocol 0|2    git.listServerRefs (0 means isomorphic-git's
//                                 protocolVersion 1, the v0/v1 advertisement)
//   push DIR REFSPEC [--user U --password P]
//                                 git.push to origin with onAuth returning
//                                 { username: U, password: P }
//
// isomorphic-git is loaded from $GUTS_INTEROP_DIR/npm (default
// <workspace>/target/interop/npm), where install.sh puts it. Results carry
// "refs", "head", "shallow" as isomorphic-git reads them and "auth_calls":
// the URLs onAuth was called with.
import { createRequire } from 'node:module'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const interopDir =
  process.env.GUTS_INTEROP_DIR || path.join(here, '..', '..', '..', '..', 'target', 'interop')
const require = createRequire(path.join(interopDir, 'npm', 'package.json'))
const git = require('isomorphic-git')
const http = require('isomorphic-git/http/node')

const authCalls = []

function onAuthFor(user, password) {
  return (url) => {
    authCalls.push(url)
    if (user === undefined || authCalls.length > 3) return { cancel: true }
    return { username: user, password }
  }
}

async function repoState(dir) {
  const refs = {}
  for (const prefix of ['refs/heads', 'refs/remotes', 'refs/tags']) {
    for (const name of await git.listRefs({ fs, dir, filepath: prefix })) {
      const full = `${prefix}/${name}`
      let oid
      try {
        oid = await git.resolveRef({ fs, dir, ref: full, depth: 1 })
      } catch {
        continue
      }
      if (/^[0-9a-f]{40}$/.test(oid)) refs[full] = oid
    }
  }
  let head = null
  try {
    head = (await git.currentBranch({ fs, dir, fullname: true })) || null
  } catch {}
  let shallow = []
  try {
    shallow = fs
      .readFileSync(path.join(dir, '.git', 'shallow'), 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .sort()
  } catch {}
  return { refs, head, shallow }
}

async function clone(url, dir, depth) {
  await git.clone({ fs, http, dir, url, depth, singleBranch: false, onAuth: onAuthFor() })
  return { ok: true, auth_calls: authCalls, ...(await repoState(dir)) }
}

async function fetchCmd(dir, depth) {
  await git.fetch({ fs, http, dir, remote: 'origin', depth, tags: true, onAuth: onAuthFor() })
  return { ok: true, auth_calls: authCalls, ...(await repoState(dir)) }
}

async function lsRefs(url, protocol) {
  const list = await git.listServerRefs({
    http,
    url,
    protocolVersion: protocol === 0 ? 1 : 2,
    symrefs: true,
    onAuth: onAuthFor(),
  })
  const refs = {}
  const symrefs = {}
  for (const r of list) {
    if (r.target) symrefs[r.ref] = r.target
    if (r.ref !== 'HEAD' && /^[0-9a-f]{40}$/.test(r.oid)) refs[r.ref] = r.oid
  }
  return { ok: true, refs, symrefs }
}

function parseRefspec(spec) {
  const force = spec.startsWith('+')
  const [src, dst] = (force ? spec.slice(1) : spec).split(':')
  if (src === '') return { ref: dst, remoteRef: dst, delete: true, force }
  return { ref: src, remoteRef: dst || src, delete: false, force }
}

async function push(dir, refspec, user, password) {
  const spec = parseRefspec(refspec)
  const base = { auth_calls: authCalls }
  try {
    const res = await git.push({ fs, http, dir, remote: 'origin', ...spec, onAuth: onAuthFor(user, password) })
    const status = {}
    for (const [ref, r] of Object.entries(res.refs || {})) status[ref] = r.ok ? null : r.error || 'rejected'
    Object.assign(base, { ok: Boolean(res.ok), error: res.error || undefined, ref_status: status })
  } catch (e) {
    Object.assign(base, { ok: false, error: `${e.code || e.name}: ${e.message}` })
  }
  return { ...base, ...(await repoState(dir)) }
}

function option(args, name, fallback) {
  const i = args.indexOf(name)
  if (i < 0) return fallback
  const [, value] = args.splice(i, 2)
  return value
}

async function main(argv) {
  const args = argv.slice(2)
  const cmd = args.shift()
  const user = option(args, '--user')
  const password = option(args, '--password')
  const protocol = Number(option(args, '--protocol', '2'))
  switch (cmd) {
    case 'clone': return clone(args[0], args[1])
    case 'clone-shallow': return clone(args[0], args[1], Number(args[2]))
    case 'fetch': return fetchCmd(args[0])
    case 'deepen': return fetchCmd(args[0], Number(args[1]))
    case 'ls-refs': return lsRefs(args[0], protocol)
    case 'push': return push(args[0], args[1], user, password)
    default: throw new Error(`unknown subcommand ${cmd}`)
  }
}

let result
try {
  result = await main(process.argv)
} catch (e) {
  result = { ok: false, error: `${e.code || e.name}: ${e.message}`, trace: e.stack, version: git.version() }
}
console.log(JSON.stringify(result))
process.exitCode = result.ok ? 0 : 1
