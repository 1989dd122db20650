#!/usr/bin/env bash
# Idempotently install the Debian packages deploy/validate.sh and
# emailclient/core/tests/test_nginx.py run: nginx (nginx -t, and a real nginx
# on loopback high ports), postfix (postconf -c) and dovecot-core (doveconf).
# Pass more package names to add them (bench/load_bench.py: wrk).
#
# Nothing is started and no port is taken: Postfix is preseeded "No
# configuration" (no main.cf, so it cannot start), and while the packages
# install a policy-rc.d refuses every service start (unless the machine has
# one already, as Debian's container images do). apt-get update runs only
# when something is missing. Needs root (or sudo).
set -euo pipefail

PACKAGES=(nginx postfix dovecot-core "$@")
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    SUDO="sudo"
fi
policy=/usr/sbin/policy-rc.d
made_policy=""
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# deploy/install-tools.sh: start no service while installing\nexit 101\n' |
        $SUDO tee "$policy" >/dev/null
    $SUDO chmod 0755 "$policy"
    made_policy=1
fi
cleanup() { if [[ -n $made_policy ]]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

echo "install-tools: installing ${missing[*]}"
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
