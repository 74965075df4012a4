"""`python -m training` after `make serve` (the runtime set only): a one-line hint, not a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs the CLI with one package made unimportable, as in a venv without the train extra.
WITHOUT = """
import sys
sys.modules[sys.argv[1]] = None  # `import NAME` now raises ModuleNotFoundError
from training.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("package", ["yaml", "tqdm", "nltk"])
def test_training_without_its_extra_says_how_to_install_it(tmp_path, package):
    r = subprocess.run([sys.executable, "-c", WITHOUT, package, "train", "--config", "tiny",
                        "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and package in last and "training needs its extra packages" in last
    assert "requirements/dev.txt" in last and "make install-dev" in last


def test_the_installed_command_names_itself_and_the_installed_extra(monkeypatch, capsys):
    from training import __main__ as m

    monkeypatch.setattr(sys, "argv", ["/venv/bin/cvae-dialog-train", "--help"])
    assert m.build_parser().prog == "cvae-dialog-train"
    assert m._missing_extra(ModuleNotFoundError("No module named 'yaml'")) == 2
    assert "pip install 'cvae-dialog[train]'" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["-m"])
    assert m.build_parser().prog == "python -m training"
