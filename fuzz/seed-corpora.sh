#!/usr/bin/env bash
# Regenerate fuzz/fixtures and the seed corpora in fuzz/corpus/ from real
# git traffic, captured offline: stock git pushes and fetches over its local
# transport (`--receive-pack` / `--upload-pack` wrappers that tee the byte
# streams), which carry the same request bodies as smart HTTP. Identity
# documents and p2p messages come from the crates themselves (the
# `seed-corpora` helper, built once with `--features seed`).
#
# Usage: fuzz/seed-corpora.sh            (needs git, ssh-keygen, python3, cargo +nightly)
# Deterministic apart from the push-certificate nonce/signature timestamps.
set -euo pipefail
FUZZ="$(cd "$(dirname "$0")" && pwd)"
CORPUS="$FUZZ/corpus"
FIXTURES="$FUZZ/fixtures"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT

# git runs with a HOME of its own; cargo must still find the toolchains.
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export HOME="$T/home" GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL="$T/home/.gitconfig"
export GIT_AUTHOR_NAME=Fuzz GIT_AUTHOR_EMAIL=fuzz@example.com
export GIT_COMMITTER_NAME=Fuzz GIT_COMMITTER_EMAIL=fuzz@example.com
export GIT_AUTHOR_DATE="1700000000 +0000" GIT_COMMITTER_DATE="1700000000 +0000"
mkdir -p "$HOME"
git config --global init.defaultBranch main
git config --global protocol.file.allow always
git config --global advice.detachedHead false

# --- the seeded repository (fuzz/fixtures/small.{pack,refs}) -----------------
# main = c2 (a.txt twice, with a delta; dir/b.txt), annotated tag v1 -> c2,
# topic = c1. c3 is not in it: pushes of c3 are fast-forwards with thin packs.
W="$T/work"
git init -q "$W"
cd "$W"
python3 - <<'EOF'
lines = [f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(300)]
open("a.txt", "w").write("".join(lines))
import os
os.makedirs("dir/sub", exist_ok=True)
open("dir/b.txt", "w").write("b\n" * 50)
open("dir/sub/c.txt", "w").write("c\n")
EOF
git add -A && git commit -q -m one
C1=$(git rev-parse HEAD)
sed -i 's/line 150:/line 150 (changed):/' a.txt
git commit -q -a -m two
C2=$(git rev-parse HEAD)
git tag -a -m "version 1" v1
sed -i 's/line 10:/line 10 (changed again):/' a.txt
echo new > new.txt && git add new.txt
git commit -q -a -m three
C3=$(git rev-parse HEAD)
git branch topic "$C1"
TAG=$(git rev-parse v1)

mkdir -p "$FIXTURES"
git pack-objects --revs --stdout -q > "$FIXTURES/small.pack" <<EOF
$C2
refs/tags/v1
$C1
EOF
printf '%s refs/heads/main\n%s refs/heads/topic\n%s refs/tags/v1\n' "$C2" "$C1" "$TAG" > "$FIXTURES/small.refs"

# The server side: a bare repository holding the same refs as the fixture.
S="$T/server.git"
git init -q --bare "$S"
git -C "$S" fetch -q "$W" "$C2:refs/heads/main" "$C1:refs/heads/topic" "refs/tags/v1:refs/tags/v1"
git -C "$S" config receive.certNonceSeed fuzz-seed
git -C "$S" config receive.advertisePushOptions true
git -C "$S" config uploadpack.allowFilter true
git -C "$S" config uploadpack.allowAnySHA1InWant true
git -C "$S" config uploadpack.allowRefInWant true
git -C "$S" config receive.denyDeleteCurrent false
cp -r "$S" "$T/server-pristine.git"
reset_server() { rm -rf "$S" && cp -r "$T/server-pristine.git" "$S"; }

# Wrappers that record what the client sends (and what the server answers).
CAP="$T/cap"
mkdir -p "$CAP"
cat > "$T/rp" <<EOF
#!/bin/sh
tee "$CAP/rp-in" | git-receive-pack "\$@" | tee "$CAP/rp-out"
EOF
cat > "$T/up" <<EOF
#!/bin/sh
tee "$CAP/up-in" | git-upload-pack "\$@" | tee "$CAP/up-out"
EOF
chmod +x "$T/rp" "$T/up"

# A throwaway SSH key for signed pushes, written by guts-identity itself (the
# helper) so that the identity documents below name the same key.
cargo +nightly build -q --release --manifest-path "$FUZZ/Cargo.toml" --features seed --bin seed-corpora
HELPER="$FUZZ/target/release/seed-corpora"
"$HELPER" key "$T/key"
git config --global gpg.format ssh
git config --global user.signingkey "$T/key"

PK="$T/pk"; mkdir -p "$PK"
for t in pktline receive_request push_cert v2_fetch filter_spec pack_ingest identity_doc p2p_wire push_token; do
    rm -rf "${CORPUS:?}/$t"; mkdir -p "$CORPUS/$t"
done

# receive_request inputs: one selector byte (0: empty repository, 1: the
# seeded one), then the request body exactly as git sent it.
push_capture() { # name selector git-push-args...
    local name=$1 sel=$2; shift 2
    rm -f "$CAP/rp-in" "$CAP/rp-out"
    git push -q --receive-pack="$T/rp" "$@" >/dev/null 2>&1 || true
    { printf "\\x$sel"; cat "$CAP/rp-in"; } > "$CORPUS/receive_request/$name"
    cp "$CAP/rp-in" "$PK/$name.in"; cp "$CAP/rp-out" "$PK/$name.out"
}
reset_server; push_capture ff-main 01 "$S" "$C3:refs/heads/main"
reset_server; push_capture signed-ff 01 --signed -o ci.skip "$S" "$C3:refs/heads/main"
reset_server; push_capture atomic-multi 01 --atomic "$S" "$C3:refs/heads/main" "$C2:refs/heads/topic" "$C3:refs/heads/new"
reset_server; push_capture delete-topic 01 "$S" ":refs/heads/topic"
reset_server; push_capture force-topic 01 --force "$S" "$C2:refs/heads/topic"
git init -q --bare "$T/empty.git"
push_capture create-all 00 "$T/empty.git" "$C3:refs/heads/main" "$C1:refs/heads/topic" "refs/tags/v1:refs/tags/v1"

# push_cert inputs: the certificate text out of the signed push (pkt-lines
# between `push-cert\0caps` and `push-cert-end`).
python3 - "$PK/signed-ff.in" "$CORPUS/push_cert/signed" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
i, cert, inside = 0, b"", False
while i + 4 <= len(data):
    n = int(data[i:i+4], 16)
    if n < 4:
        i += 4
        if inside: break
        continue
    p = data[i+4:i+n]; i += n
    if p.startswith(b"push-cert\0"): inside = True; continue
    if p == b"push-cert-end\n": break
    if inside: cert += p
open(sys.argv[2], "wb").write(cert)
EOF
"$HELPER" cert > "$CORPUS/push_cert/guts-signed"

# pack_ingest inputs: the fixture pack, thin packs from the pushes, and a
# few real commits of ripgrep (thin, against their parents) when the shared
# bundle is there.
cp "$FIXTURES/small.pack" "$CORPUS/pack_ingest/small"
python3 - "$PK/ff-main.in" "$CORPUS/pack_ingest/thin-ff" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(data[data.index(b"PACK"):])
EOF
printf '%s\n^%s\n' "$C3" "$C1" | git pack-objects --revs --stdout -q > "$CORPUS/pack_ingest/full-c3"
BUNDLE="$FUZZ/../../shared/fixtures/ripgrep.bundle"
[ -f "$BUNDLE" ] || BUNDLE="/work/shared/fixtures/ripgrep.bundle"
if [ -f "$BUNDLE" ]; then
    git clone -q --bare "$BUNDLE" "$T/rg.git"
    RG=$(git -C "$T/rg.git" for-each-ref --count=1 --sort=-committerdate --format='%(objectname)')
    printf '%s\n^%s~2\n' "$RG" "$RG" | git -C "$T/rg.git" pack-objects --revs --thin --stdout -q > "$CORPUS/pack_ingest/ripgrep-thin"
    printf '%s~5\n^%s~6\n' "$RG" "$RG" | git -C "$T/rg.git" pack-objects --revs --stdout -q > "$CORPUS/pack_ingest/ripgrep-commit"
fi

# upload-pack captures: clones and fetches in protocol v2 (and one in v0).
fetch_capture() { # name git-args...
    local name=$1; shift
    rm -f "$CAP/up-in" "$CAP/up-out"
    git "$@" >/dev/null 2>&1 || true
    cp "$CAP/up-in" "$PK/$name.in"; cp "$CAP/up-out" "$PK/$name.out"
}
reset_server
URL="file://$S"
fetch_capture clone -c protocol.version=2 clone -q --bare --upload-pack="$T/up" "$URL" "$T/c1"
fetch_capture shallow -c protocol.version=2 clone -q --bare --depth 1 --upload-pack="$T/up" "$URL" "$T/c2"
fetch_capture partial -c protocol.version=2 clone -q --bare --filter=blob:none --upload-pack="$T/up" "$URL" "$T/c3"
fetch_capture treeless -c protocol.version=2 clone -q --bare --filter=tree:0 --upload-pack="$T/up" "$URL" "$T/c4"
fetch_capture combine -c protocol.version=2 clone -q --bare --filter=blob:limit=1k --filter=tree:2 --upload-pack="$T/up" "$URL" "$T/c5"
fetch_capture since -c protocol.version=2 clone -q --bare --shallow-since=2000-01-01 --shallow-exclude=topic --upload-pack="$T/up" "$URL" "$T/c6"
git init -q --bare "$T/inc" && git -C "$T/inc" fetch -q "$W" "$C1:refs/heads/topic"
fetch_capture incremental -C "$T/inc" -c protocol.version=2 fetch -q --upload-pack="$T/up" "$URL" "refs/heads/*:refs/heads/*" "refs/tags/*:refs/tags/*"
# The node advertises ref-in-want, so git sends want-ref; once with plain wants.
git -C "$S" config uploadpack.allowRefInWant false
fetch_capture oid-wants -c protocol.version=2 clone -q --bare --depth 2 --upload-pack="$T/up" "$URL" "$T/c8"
git -C "$S" config uploadpack.allowRefInWant true
fetch_capture v0-clone -c protocol.version=0 clone -q --bare --upload-pack="$T/up" "$URL" "$T/c7"
git init -q --bare "$T/inc0" && git -C "$T/inc0" fetch -q "$W" "$C1:refs/heads/topic"
fetch_capture v0-incremental -C "$T/inc0" -c protocol.version=0 fetch -q --upload-pack="$T/up" "$URL" "refs/heads/*:refs/heads/*"

# v2_fetch inputs: a selector byte, then
#   0 fetch / 1 ls-refs / 2 object-info: argument lines separated by \n;
#   3: a raw protocol v2 request body; 4: a raw v0 request body.
# Each v2 stream is cut into its requests (one command each, up to a flush).
python3 - "$PK" "$CORPUS" "$C1" "$C2" "$TAG" <<'EOF'
import os, sys
pk, corpus, c1, c2, tag = sys.argv[1:]
def pkts(data):
    i, out = 0, []
    while i + 4 <= len(data):
        n = int(data[i:i+4], 16)
        if n < 4:
            out.append((n, None)); i += 4; continue
        out.append((n, data[i+4:i+n])); i += n
    return out
def enc(p): return b"%04x" % (len(p) + 4) + p
def write(target, name, data):
    open(os.path.join(corpus, target, name), "wb").write(data)
filters = set()
for name in ["clone", "shallow", "partial", "treeless", "combine", "since", "incremental", "oid-wants"]:
    data = open(os.path.join(pk, name + ".in"), "rb").read()
    req, k = b"", 0
    for n, p in pkts(data):
        req += enc(p) if p is not None else b"%04x" % n
        if n == 0:
            cmd = pkts(req)[0][1] if req != b"0000" else None
            if cmd:
                write("v2_fetch", f"raw-{name}-{k}", b"\x03" + req)
                write("pktline", f"v2-{name}-{k}", req)
                items = pkts(req)
                if 1 in [x[0] for x in items]:
                    d = [x[0] for x in items].index(1)
                    args = [x[1].rstrip(b"\n") for x in items[d+1:] if x[1] is not None]
                    sel = {b"command=fetch": 0, b"command=ls-refs": 1}.get(cmd.rstrip(b"\n"))
                    if sel is not None: write("v2_fetch", f"args-{name}-{k}", bytes([sel]) + b"\n".join(args))
                    for a in args:
                        if a.startswith(b"filter "): filters.add(a[7:])
            req, k = b"", k + 1
    out = open(os.path.join(pk, name + ".out"), "rb").read()
    write("pktline", f"v2-{name}-response", out[:32768])
for name in ["v0-clone", "v0-incremental"]:
    data = open(os.path.join(pk, name + ".in"), "rb").read()
    write("v2_fetch", f"raw-{name}", b"\x04" + data)
    write("pktline", name, data)
for name in ["ff-main", "signed-ff", "atomic-multi"]:
    write("pktline", f"push-{name}-report", open(os.path.join(pk, name + ".out"), "rb").read()[:32768])
# object-info has no porcelain client yet: the request as gitprotocol-v2 gives it.
write("v2_fetch", "args-object-info", b"\x02" + b"\n".join([b"size", b"oid " + c2.encode(), b"oid " + tag.encode(), b"oid " + b"0" * 40]))
write("v2_fetch", "args-ls-refs-all", b"\x01symrefs\npeel\nunborn\nref-prefix HEAD\nref-prefix refs/heads/\nref-prefix refs/tags/")
write("v2_fetch", "args-want-ref", b"\x00" + b"\n".join([b"thin-pack", b"ofs-delta", b"include-tag", b"sideband-all", b"want-ref refs/heads/main", b"deepen 1", b"deepen-relative", b"done"]))
write("v2_fetch", "args-negotiate", b"\x00" + b"\n".join([b"ofs-delta", b"wait-for-done", b"want " + c2.encode(), b"have " + c1.encode(), b"have " + tag.encode()]))
for i, f in enumerate(sorted(filters | {b"blob:none", b"blob:limit=1k", b"tree:0", b"object:type=commit", b"combine:blob:none+tree:3", b"combine:blob%3Alimit%3D10+object%3Atype%3Dtree"})):
    write("filter_spec", f"spec-{i}", f)
EOF

# push_token inputs: a token, its grant, and a logged update made with it.
"$HELPER" tokens "$CORPUS/push_token"
cp "$CORPUS/push_token/update-with-grant" "$CORPUS/identity_doc/"

# identity_doc and p2p_wire inputs: made by the crates (documents signed by
# the key above, the signed push wrapped as a SignedRefUpdate, requests whose
# body is a real v2 fetch request, log pages, summaries; raw and framed).
"$HELPER" docs "$CORPUS/identity_doc"
"$HELPER" wire "$CORPUS/push_cert/signed" "$CORPUS/v2_fetch/raw-clone-1" "$CORPUS/p2p_wire"

# pktline: also the pushes' request streams (commands, certificate, pack start).
for n in ff-main signed-ff delete-topic; do head -c 32768 "$PK/$n.in" > "$CORPUS/pktline/push-$n"; done

du -sh "$CORPUS"/* "$FIXTURES"
