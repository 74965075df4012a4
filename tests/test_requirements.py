"""The lock files (requirements/*.txt, written by `make lock`) against pyproject.toml and the code.

Offline checks: every declared dependency is locked at a version its specifier allows, the dev set agrees
with the runtime set, torch is left to constraints.txt, and what the service's packages import (app/, model/)
is all in the runtime set, so `make serve` and the API image have everything they need and nothing of training;
and the packages import each other one way only: model under training and app, the tool packages above them all.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*$")


def locked(name: str) -> dict[str, str]:
    """{canonical name: version} of requirements/NAME.txt; fails on any line that is not a plain pin."""
    pins = {}
    for lineno, line in enumerate((ROOT / "requirements" / name).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"requirements/{name}:{lineno}: not a 'name==version' pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def declared(extra: str | None) -> list[Requirement]:
    """The requirements of the runtime set (extra None) or of an extra, the project's own extras expanded."""
    raw = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    out = []
    for text in raw:
        req = Requirement(text)
        if canonicalize_name(req.name) == canonicalize_name(PROJECT["name"]):
            for sub in sorted(req.extras):
                out += declared(sub)
        else:
            out.append(req)
    return out


def check_pinned(reqs: list[Requirement], pins: dict[str, str], where: str) -> None:
    problems = []
    for req in reqs:
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        if name not in pins:
            problems.append(f"{req} is not in {where}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{where} has {name}=={pins[name]}, outside {req}")
    assert not problems, "run `make lock`: " + "; ".join(problems)


def test_runtime_lock_holds_the_runtime_set():
    check_pinned(declared(None), locked("runtime.txt"), "requirements/runtime.txt")


def test_dev_lock_holds_everything_at_the_runtime_versions():
    runtime, dev = locked("runtime.txt"), locked("dev.txt")
    check_pinned(declared(None) + declared("train") + declared("dev"), dev, "requirements/dev.txt")
    differ = {k: (v, dev.get(k)) for k, v in runtime.items() if dev.get(k) != v}
    assert not differ, f"runtime and dev locks disagree (runtime, dev): {differ}"


def test_training_packages_stay_out_of_the_runtime_set():
    runtime = locked("runtime.txt")
    train_only = {canonicalize_name(r.name) for r in declared("train")} - {
        canonicalize_name(r.name) for r in declared(None)}
    assert train_only and not train_only & set(runtime), train_only & set(runtime)


def test_torch_is_left_to_constraints():
    constraints = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==\S+$", constraints, re.M), "constraints.txt pins torch"
    for name in ("runtime.txt", "dev.txt"):
        assert "torch" not in locked(name), f"requirements/{name} must not pin torch (constraints.txt does)"


@pytest.mark.parametrize("name", ["runtime.txt", "dev.txt"])
def test_lock_names_no_path_of_a_machine(name):
    text = (ROOT / "requirements" / name).read_text()
    assert not re.search(r"(^|\s)(/|file:|\.\./|~)", text, re.M), "a lock file must not record local paths"
    assert "make lock" in text.splitlines()[1], "the header names the command that writes the file"


def _imports(folder: Path) -> set[str]:
    """Top-level module names imported anywhere under folder (also inside functions)."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_the_service_imports_only_the_runtime_set():
    """app/ and model/ import nothing that `make serve` (the runtime lock plus torch) does not install."""
    ours = {"app", "model", "training", "tests"}
    third_party = {m for m in _imports(ROOT / "app") | _imports(ROOT / "model")
                   if m not in ours and m not in sys.stdlib_module_names}
    dists = packages_distributions()
    runtime = set(locked("runtime.txt")) | {"torch"}
    outside = {}
    for module in sorted(third_party):
        names = {canonicalize_name(d) for d in dists.get(module, [])}
        if not names & runtime:
            outside[module] = sorted(names) or "not installed"
    assert not outside, f"app/ or model/ import packages outside the runtime set: {outside}"


TOOLS = {"benchmarks", "reliability", "harness"}  # tool packages: above the product, never imported by it


@pytest.mark.parametrize("package, never", [
    ("model", {"app", "training"} | TOOLS),  # all it takes to run a model, nothing of training or serving it
    ("training", TOOLS),
    ("app", {"training"} | TOOLS),
    ("harness", {"benchmarks", "reliability"}),  # the one home of what the two tool packages share
    ("benchmarks", {"reliability"}),
    ("reliability", {"benchmarks"}),
    ("tests/model", {"benchmarks", "reliability"}),  # a model test borrows a tool's helper from the harness
])
def test_layering(package, never):
    """Imports go one way: training and app import model, model neither; the tool packages import the product and
    the harness, never each other, and nothing of the product imports them."""
    assert (ROOT / package).is_dir()
    found = _imports(ROOT / package) & never
    assert not found, f"{package}/ imports {sorted(found)}"
