#!/usr/bin/env bash
# Create .venv with Python 3.11 and install the pinned requirements; reinstall
# only when a requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=""
for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && \
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        python=$candidate; break
    fi
done
[ -n "$python" ] || { echo "Python 3.11 is required (python3.11 or python3)." >&2; exit 1; }

stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
printf '==> installing Python requirements into .venv\n'
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
echo "$want" > "$stamp"
