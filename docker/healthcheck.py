"""Container health check: exit 0 when GET /readyz answers 200, else 1.

Standard library only, so the image needs no curl. It asks the port the server listens on
(DIALOG_PORT, 8000 by default) on loopback; /readyz answers 503 while the model loads or the
server drains, which urllib raises as an HTTPError.
"""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("DIALOG_PORT", "8000")
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT", "4"))) as r:
            return 0 if r.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"{url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
