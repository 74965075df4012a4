#!/usr/bin/env bash
# Audit the installed Python environment (the project's venv) for dependencies with known vulnerabilities.
#
#   scripts/audit.sh                 # CI runs it; extra arguments go to pip-audit (e.g. --ignore-vuln ID)
#
# Exit 0 and "OK: ..." when the audit ran and found nothing; exit 1 and "FAIL: ..." with the list when it
# found vulnerabilities; exit 0 and "SKIPPED: ..." when the advisory service could not be reached (no
# network, DNS failure, a proxy refusing, or a service that answered for no package at all: an audit that
# checked nothing is reported as skipped, never as a pass); exit 2 and "FAIL: ..." on any other error.
#
# Environment: AUDIT_PYTHON (default .venv/bin/python, else python3) picks the environment;
# PIP_AUDIT (default: pip-audit beside that python) the pip-audit command; AUDIT_TIMEOUT (s, default 30).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${AUDIT_PYTHON:-$ROOT/.venv/bin/python}
[[ -x $PY ]] || PY=$(command -v python3)
PIP_AUDIT=${PIP_AUDIT:-$(dirname "$PY")/pip-audit}
if [[ ! -x $PIP_AUDIT ]] && ! command -v "$PIP_AUDIT" >/dev/null; then
    echo "FAIL: pip-audit not found ($PIP_AUDIT); install the dev extra: pip install -e '.[dev]'"
    exit 2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# --skip-editable: the project itself is not on PyPI. PIPAPI_PYTHON_LOCATION: audit that interpreter's packages.
PIPAPI_PYTHON_LOCATION=$PY "$PIP_AUDIT" --progress-spinner off --skip-editable --timeout "${AUDIT_TIMEOUT:-30}" \
    -f json -o "$WORK/report.json" "$@" >"$WORK/stdout" 2>"$WORK/stderr"
rc=$?

"$PY" - "$WORK" "$rc" <<'PYEOF'
import json, re, sys
from pathlib import Path

work, rc = Path(sys.argv[1]), int(sys.argv[2])
err = (work / "stderr").read_text(errors="replace") + (work / "stdout").read_text(errors="replace")
NETWORK = re.compile(r"ConnectionError|Max retries exceeded|Name or service not known|Temporary failure in name "
                     r"resolution|Failed to resolve|Network is unreachable|Connection refused|timed out|"
                     r"ProxyError|SSLError|HTTPSConnectionPool|ConnectTimeout|ReadTimeout|No route to host", re.I)
try:
    report = json.loads((work / "report.json").read_text())
    deps = report["dependencies"] if isinstance(report, dict) else report
except (OSError, ValueError, KeyError, TypeError):
    report = None
if report is None:
    last = (err.strip().splitlines() or ["(no output)"])[-1][:300]
    if NETWORK.search(err):
        print(f"SKIPPED: pip-audit could not reach the vulnerability service: {last}")
        sys.exit(0)
    print(f"FAIL: pip-audit failed (exit {rc}) without a report: {last}")
    sys.exit(2)
vulnerable = [d for d in deps if d.get("vulns")]
skipped = [d for d in deps if "skip_reason" in d]
audited = len(deps) - len(skipped)
if vulnerable:
    print(f"FAIL: {sum(len(d['vulns']) for d in vulnerable)} known vulnerabilities in {len(vulnerable)} "
          f"of {audited} audited packages:")
    for d in vulnerable:
        for v in d["vulns"]:
            fix = ", ".join(v.get("fix_versions") or []) or "none"
            print(f"  {d['name']} {d['version']}: {v['id']} (fixed in: {fix})")
    sys.exit(1)
if deps and audited == 0:
    reason = skipped[0].get("skip_reason", "")
    print(f"SKIPPED: the vulnerability service answered for none of the {len(deps)} packages "
          f"(no network to it?): {reason}")
    sys.exit(0)
if rc != 0:
    print(f"FAIL: pip-audit exited {rc}: {(err.strip().splitlines() or [''])[-1][:300]}")
    sys.exit(2)
note = f"; {len(skipped)} not audited (e.g. {skipped[0]['name']}: {skipped[0]['skip_reason']})" if skipped else ""
print(f"OK: {audited} packages audited, no known vulnerabilities{note}")
PYEOF
