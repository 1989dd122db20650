"""Container health probe for the web role: GET /health on the local gunicorn.

Exit 0 on HTTP 200, 1 on anything else (503, refused, timeout). Standard
library only, so it costs no extra package in the image.

The request carries a Host header that Django accepts, the first ALLOWED_HOSTS
entry: with the default "127.0.0.1" Django would answer 400 whenever
ALLOWED_HOSTS names only the public hostname. /health is exempt from the
HTTPS redirect (SECURE_REDIRECT_EXEMPT in settings/production.py).
"""

import http.client
import os
import sys


def host_header() -> str:
    hosts = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()]
    if not hosts or hosts[0] == "*":
        return "localhost"
    # ".example.com" allows example.com and its subdomains; send example.com.
    return hosts[0].lstrip(".")


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=4)
    try:
        conn.request("GET", "/health", headers={"Host": host_header()})
        response = conn.getresponse()
        body = response.read(500).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        print(f"health: no answer on port {port}: {exc}")
        return 1
    finally:
        conn.close()
    print(f"health: HTTP {response.status} {body}")
    return 0 if response.status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
