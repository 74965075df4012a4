"""Print the dependencies that pyproject.toml declares, one per line, for `pip install -r`.

The image installs dependencies in a layer of their own, before the source is copied in, so that
editing the code does not re-download them; this reads them from the one place they are declared.

    python docker/requirements.py pyproject.toml            # [project] dependencies
    python docker/requirements.py pyproject.toml train      # the `train` extra only

An extra that names the project itself (``cvae-dialog[train]``) is expanded in place.
"""

from __future__ import annotations

import re
import sys
import tomllib

_SELF = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*\[([^\]]+)\]\s*$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(project: dict, extra: str | None, seen: set[str] | None = None) -> list[str]:
    seen = set() if seen is None else seen
    if extra is None:
        return list(project.get("dependencies", []))
    if extra in seen:
        return []
    seen.add(extra)
    extras = project.get("optional-dependencies", {})
    if extra not in extras:
        raise SystemExit(f"no extra {extra!r} in pyproject.toml (have: {', '.join(sorted(extras))})")
    out: list[str] = []
    for req in extras[extra]:
        m = _SELF.match(req)
        if m and _norm(m.group(1)) == _norm(project["name"]):
            for sub in m.group(2).split(","):
                out += requirements(project, sub.strip(), seen)
        else:
            out.append(req)
    return out


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], "rb") as f:
        project = tomllib.load(f)["project"]
    for req in requirements(project, argv[1] if len(argv) == 2 else None):
        print(req)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
