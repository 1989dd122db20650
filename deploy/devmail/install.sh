#!/usr/bin/env bash
# Idempotently install what deploy/devmail needs: Dovecot (IMAP + POP3),
# isync (mbsync, for benchmarks) and the openssl CLI, from Debian's apt.
#
# Only runs `apt-get update` + `apt-get install` when something is missing.
# The Debian packages may start the system's default Dovecot (ports 143/110)
# when an init system is present; our throwaway instances never use it, and
# this script does not start it.  Needs root (or sudo).
set -euo pipefail

PACKAGES=(dovecot-imapd dovecot-pop3d isync openssl)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "devmail: all packages already installed (${PACKAGES[*]})"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "devmail: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends: we need neither ssl-cert nor the dovecot docs.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

# Sanity check: the binaries our instances run.
for b in /usr/sbin/dovecot /usr/bin/doveadm /usr/bin/mbsync /usr/bin/openssl; do
    [ -x "$b" ] || { echo "devmail: $b missing after install" >&2; exit 1; }
done
# Users Dovecot's privilege separation needs (created by the package).
getent passwd dovenull >/dev/null || { echo "devmail: user dovenull missing" >&2; exit 1; }
getent passwd dovecot >/dev/null || { echo "devmail: user dovecot missing" >&2; exit 1; }
echo "devmail: installed"
