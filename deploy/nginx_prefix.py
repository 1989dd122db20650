"""Run deploy/nginx/ outside Docker: a throwaway nginx prefix holding the very
files the nginx container gets, its template rendered as the image renders it.

    python3 deploy/nginx_prefix.py PREFIX --upstream 127.0.0.1:8000 [--resolver 127.0.0.11] \
        --http-port 8080 --https-port 8443      # prints the nginx command line

Used by deploy/validate.sh (`nginx -t`), emailclient/core/tests/test_nginx.py
(a real nginx in front of a real gunicorn) and bench/load_bench.py. Standard
library only. What differs from the container is added, never edited: a
conf.d/zz-prefix.conf with temp folders inside the prefix, and the pid file
and user given on the command line; a self-signed certificate is made with
the openssl CLI when no certificate folder is given.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

NGINX_DIR = Path(__file__).resolve().parent / "nginx"
TEMPLATE = NGINX_DIR / "templates" / "emailclient.conf.template"
MIME_TYPES = Path("/etc/nginx/mime.types")  # Debian's nginx-common; the image has its own
NAME = re.compile(r"\$\{(NGINX_[A-Z0-9_]+)\}")


def render(text: str, values: dict[str, str]) -> str:
    """The nginx image's envsubst, restricted to ${NGINX_*} names (what
    NGINX_ENVSUBST_FILTER=^NGINX_ does); a name without a value is an error
    here, where envsubst would leave an empty string."""
    missing = sorted({m for m in NAME.findall(text) if m not in values})
    if missing:
        raise ValueError(f"no value for {', '.join(missing)}")
    return NAME.sub(lambda m: values[m.group(1)], text)


def self_signed(folder: Path, host: str = "localhost") -> None:
    """fullchain.pem and privkey.pem for `host` (and 127.0.0.1), one day."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host},IP:127.0.0.1",
            "-keyout", str(folder / "privkey.pem"), "-out", str(folder / "fullchain.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def build(
    prefix: Path,
    *,
    upstream: str,
    resolver: str = "127.0.0.1",
    resolver_valid: str = "10s",
    http_port: int,
    https_port: int,
    public_http_port: int | None = None,
    public_https_port: int | None = None,
    server_name: str = "_",
    cert_dir: Path | None = None,
    extra_conf: dict[str, str] | None = None,
) -> list[str]:
    """Fill `prefix` and return the command that runs nginx in the foreground
    on it (add `-t` to only test the configuration). `resolver` names the
    upstream's host when it is not an address. The public ports, what
    clients use, are the ports nginx listens on unless given (compose
    publishes 80 and 443 on others)."""
    prefix = prefix.resolve()
    (prefix / "conf.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(NGINX_DIR / "nginx.conf", prefix / "nginx.conf")
    shutil.copy(MIME_TYPES, prefix / "mime.types")
    shutil.copytree(NGINX_DIR / "snippets", prefix / "snippets", dirs_exist_ok=True)
    if cert_dir is None:
        cert_dir = prefix / "certs"
        self_signed(cert_dir)
    values = {
        "NGINX_SERVER_NAME": server_name,
        "NGINX_UPSTREAM": upstream,
        "NGINX_RESOLVER": resolver,
        "NGINX_RESOLVER_VALID": resolver_valid,
        "NGINX_HTTP_PORT": str(http_port),
        "NGINX_HTTPS_PORT": str(https_port),
        "NGINX_PUBLIC_HTTP_PORT": str(public_http_port or http_port),
        "NGINX_PUBLIC_HTTPS_PORT": str(public_https_port or https_port),
        "NGINX_CERT_DIR": str(cert_dir.resolve()),
    }
    (prefix / "conf.d" / "emailclient.conf").write_text(render(TEMPLATE.read_text(), values))
    temp = prefix / "temp"
    lines = []
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (temp / kind).mkdir(parents=True, exist_ok=True)
        lines.append(f"{kind}_temp_path {temp / kind};")
    (prefix / "conf.d" / "zz-prefix.conf").write_text("# throwaway prefix only\n" + "\n".join(lines) + "\n")
    for name, text in (extra_conf or {}).items():
        (prefix / "conf.d" / name).write_text(text)
    main = f"pid {prefix / 'nginx.pid'}; daemon off;"
    if os.geteuid() == 0:
        main += " user root;"  # workers write the temp folders of this root-owned prefix
    return [
        shutil.which("nginx") or "/usr/sbin/nginx",
        "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log"), "-g", main,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", type=Path)
    parser.add_argument("--upstream", default="127.0.0.1:8000")
    parser.add_argument("--resolver", default="127.0.0.1", help="DNS server for the upstream's name")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--https-port", type=int, default=8443)
    parser.add_argument("--public-http-port", type=int)
    parser.add_argument("--public-https-port", type=int)
    parser.add_argument("--cert-dir", type=Path)
    args = parser.parse_args(argv)
    command = build(
        args.prefix,
        upstream=args.upstream,
        resolver=args.resolver,
        http_port=args.http_port,
        https_port=args.https_port,
        public_http_port=args.public_http_port,
        public_https_port=args.public_https_port,
        cert_dir=args.cert_dir,
    )
    print(" ".join(f"'{c}'" if " " in c else c for c in command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
