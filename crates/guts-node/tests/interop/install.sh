#!/usr/bin/env bash
# Installs the third-party git clients the interoperability suite
# (crates/guts-node/tests/interop.rs) drives: dulwich and pygit2 in a Python
# virtual environment (with openapi-spec-validator, for tests/openapi.rs),
# isomorphic-git in an npm directory, all pinned, under
# ${GUTS_INTEROP_DIR:-<workspace>/target/interop}. Idempotent: a client whose
# pinned version is already there is not installed again. A client that cannot
# be installed gets a WARNING and its tests print SKIP; the script exits 0.
set -uo pipefail

DULWICH_VERSION=1.2.21
PYGIT2_VERSION=1.21.0
ISOGIT_VERSION=1.44.19
# Not a git client: validates the node's OpenAPI description (tests/openapi.rs).
OPENAPI_VALIDATOR_VERSION=0.9.0

ROOT="$(cd "$(dirname "$0")/../../../.." && pwd)"
DIR="${GUTS_INTEROP_DIR:-$ROOT/target/interop}"
VENV="$DIR/venv"
NPM_DIR="$DIR/npm"
mkdir -p "$DIR"

# The last non-empty line of a log file.
last_line() {
    grep -v '^[[:space:]]*$' "$1" | tail -n 1
}

# The first line of a log file that mentions an error, else its last line.
first_error() {
    grep -m 1 -i 'error' "$1" || last_line "$1"
}

warn() {
    echo "WARNING: $1 could not be installed: $2; its interoperability tests will print SKIP"
}

apt_updated=0
apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        return 1
    fi
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

venv_usable() {
    local probe
    probe="$(mktemp -d)"
    python3 -m venv "$probe/v" >/dev/null 2>&1
    local rc=$?
    rm -rf "$probe"
    return $rc
}

# Prints the installed version of a Python distribution in the venv, if any.
venv_has() {
    "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null
}

# Installs NAME==VERSION (imported as MODULE) into the venv unless present.
pip_install() {
    local name=$1 version=$2 module=$3
    if [ "$(venv_has "$name")" = "$version" ] && "$VENV/bin/python" -c "import $module" 2>/dev/null; then
        echo "$name $version: already installed"
        return
    fi
    local log="$DIR/pip-$name.log"
    if "$VENV/bin/pip" install --disable-pip-version-check --no-input -q "$name==$version" >"$log" 2>&1 \
        && "$VENV/bin/python" -c "import $module" >>"$log" 2>&1; then
        echo "$name $version: installed"
    else
        warn "$name" "pip install $name==$version failed (last line: $(last_line "$log"))"
    fi
}

install_python_clients() {
    if [ -x "$VENV/bin/pip" ] && "$VENV/bin/python" -c "" 2>/dev/null; then
        pip_install dulwich "$DULWICH_VERSION" dulwich.porcelain
        pip_install pygit2 "$PYGIT2_VERSION" pygit2
        pip_install openapi-spec-validator "$OPENAPI_VALIDATOR_VERSION" openapi_spec_validator
        return
    fi
    if ! command -v python3 >/dev/null 2>&1 || ! venv_usable; then
        echo "python3 -m venv is unavailable; installing python3 python3-venv with apt-get"
        apt_install python3 python3-venv || true
    fi
    if ! command -v python3 >/dev/null 2>&1 || ! venv_usable; then
        warn dulwich "python3 -m venv is unavailable and apt-get could not install python3-venv"
        warn pygit2 "python3 -m venv is unavailable and apt-get could not install python3-venv"
        return
    fi
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >"$DIR/venv.log" 2>&1; then
        warn dulwich "python3 -m venv $VENV failed (see $DIR/venv.log)"
        warn pygit2 "python3 -m venv $VENV failed (see $DIR/venv.log)"
        return
    fi
    pip_install dulwich "$DULWICH_VERSION" dulwich.porcelain
    pip_install pygit2 "$PYGIT2_VERSION" pygit2
    pip_install openapi-spec-validator "$OPENAPI_VALIDATOR_VERSION" openapi_spec_validator
}

install_isogit() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "node/npm missing; installing nodejs npm with apt-get"
        apt_install nodejs npm || true
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        warn isomorphic-git "node and npm are missing and apt-get could not install them"
        return
    fi
    local pkg="$NPM_DIR/node_modules/isomorphic-git/package.json"
    if [ -f "$pkg" ] && node -e "process.exit(require('$pkg').version === '$ISOGIT_VERSION' ? 0 : 1)"; then
        echo "isomorphic-git $ISOGIT_VERSION: already installed"
        return
    fi
    mkdir -p "$NPM_DIR"
    [ -f "$NPM_DIR/package.json" ] || echo '{"name":"guts-interop","private":true}' >"$NPM_DIR/package.json"
    local log="$DIR/npm-isomorphic-git.log"
    if (cd "$NPM_DIR" && npm install --no-audit --no-fund --loglevel=error "isomorphic-git@$ISOGIT_VERSION") >"$log" 2>&1; then
        echo "isomorphic-git $ISOGIT_VERSION: installed"
    else
        warn isomorphic-git "npm install isomorphic-git@$ISOGIT_VERSION failed ($(first_error "$log"))"
    fi
}

echo "interop clients in $DIR"
install_python_clients
install_isogit
exit 0
