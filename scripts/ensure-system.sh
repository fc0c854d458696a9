#!/usr/bin/env bash
# Make sure the machine has what sandboxfs needs outside of Python: FUSE 3
# (fusermount3 and the headers pyfuse3 compiles against), a C compiler, bindfs
# (the C FUSE filesystem the benchmark compares against), PostgreSQL (the
# database of the BuildGrid engine tests/engine.py starts; it runs its own cluster
# on a free port, never the system one on 5432), and a Python that can create
# virtual environments.  Idempotent: when everything is
# there it only checks.  As root it installs what is missing with apt-get; as
# any other user it names the packages to install and exits 1.
set -euo pipefail

PY="${PY:-python3}"
PACKAGES=(fuse3 libfuse3-dev pkg-config gcc bindfs postgresql)

say() { echo "ensure-system: $*"; }

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# venv and ensurepip are both needed by `python -m venv`; Debian ships
# ensurepip separately, in python3-venv.
python_can_make_venvs() {
    "$PY" -c 'import venv, ensurepip' 2>/dev/null
}

find_missing() {
    missing=()
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    python_can_make_venvs || missing+=(python3-venv)
}

say "checking Debian packages: ${PACKAGES[*]}"
say "checking that '$PY -m venv' works"
find_missing

if ((${#missing[@]} == 0)); then
    say "all present"
elif [[ $EUID -eq 0 ]]; then
    say "installing: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    find_missing
    if ((${#missing[@]} > 0)); then
        say "still missing after apt-get install: ${missing[*]}" >&2
        say "(if '$PY' is not Debian's python3, make sure it was built with ensurepip)" >&2
        exit 1
    fi
    say "installed"
else
    {
        say "missing: ${missing[*]}"
        say "run this once as root, then try again:"
        echo
        echo "    sudo apt-get install ${missing[*]}"
        echo
    } >&2
    exit 1
fi

say "checking /dev/fuse"
if [[ ! -c /dev/fuse ]]; then
    {
        say "/dev/fuse does not exist (or is not a character device)."
        say "Load the module with 'modprobe fuse' on the host; in a container, start it"
        say "with '--device /dev/fuse --cap-add SYS_ADMIN'."
    } >&2
    exit 1
fi
if [[ ! -r /dev/fuse || ! -w /dev/fuse ]]; then
    say "note: /dev/fuse exists but $(id -un) cannot open it; mounting will need root" >&2
fi
say "ok"
