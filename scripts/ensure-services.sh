#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on loopback; install (Debian packages)
# and start them when they do not. Also installs, when missing, Chromium for the
# browser tests and Dovecot for the mail tests. Idempotent; safe to run on every
# start.
set -euo pipefail

log() { printf '==> %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        log "apt-get update"
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL -----------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql postgresql-contrib
    fresh_pg=1
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    if [ "${fresh_pg:-}" = 1 ]; then
        # A cluster we just installed: let local development connect over
        # loopback without passwords, as the machines this project targets do.
        hba="/etc/postgresql/$version/main/pg_hba.conf"
        grep -q "emailclient-dev" "$hba" || \
            $SUDO sed -i '1i host all all 127.0.0.1/32 trust # emailclient-dev\nhost all all ::1/128 trust # emailclient-dev' "$hba"
    fi
    log "starting PostgreSQL $version"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; }

# --- Redis ----------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting Redis"
    $SUDO mkdir -p /var/lib/redis /var/log/redis
    $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "Redis does not answer on 127.0.0.1:6379" >&2; exit 1; }
log "PostgreSQL and Redis are up"

# --- Chromium (the browser tests drive it through Playwright) --------------------
# Debian's build: Playwright cannot download its own browsers here. Fonts so
# that screenshots show text.
if [ ! -x /usr/bin/chromium ]; then
    apt_install --no-install-recommends chromium fonts-liberation fonts-dejavu-core
fi

# --- Dovecot (dev/test IMAP and POP3 server) and isync (mbsync, for bench/) -----
"$(dirname "$0")/../deploy/devmail/install.sh"
