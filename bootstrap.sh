#!/bin/sh
# Create .venv with a Python >= 3.12 and install keyswap into it.
#   ./bootstrap.sh        runtime only (the proxy and `python -m login`)
#   ./bootstrap.sh test   plus what the tests need
# Looks for python3.13 / python3.12 on PATH, then pyenv's, then `python3`
# if it is new enough. Set KEYSWAP_PYTHON=/path/to/python to choose yourself.
set -eu
cd "$(dirname "$0")"

good() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }

find_python() {
    for cand in "${KEYSWAP_PYTHON:-}" python3.13 python3.12 python3; do
        [ -n "$cand" ] || continue
        p=$(command -v "$cand" 2>/dev/null) || continue
        if good "$p"; then echo "$p"; return 0; fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root)
        for v in $(ls -1 "$root/versions" 2>/dev/null | sort -rV); do
            p="$root/versions/$v/bin/python"
            if [ -x "$p" ] && good "$p"; then echo "$p"; return 0; fi
        done
    fi
    return 1
}

if [ ! -x .venv/bin/python ] || ! good .venv/bin/python; then
    py=$(find_python) || {
        echo "keyswap needs Python 3.12 or newer; none found on PATH or under pyenv." >&2
        echo "Install one (e.g. 'pyenv install 3.12') or set KEYSWAP_PYTHON=/path/to/python3.12." >&2
        exit 1
    }
    echo "Using $py ($("$py" -c 'import platform; print(platform.python_version())'))" >&2
    rm -rf .venv
    "$py" -m venv .venv
fi

extra=""
[ "${1:-}" = "test" ] && extra="[test]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".$extra" >&2
