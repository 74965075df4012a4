"""The documented commands: python -m app --help, python -m app respond ..., and serving with SIGTERM."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.server import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 60, **environ: str) -> subprocess.CompletedProcess[str]:
    """``python -m app ARGS`` without the DIALOG_* variables of this environment, with ``environ``'s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOG_")} | environ
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_help():
    r = run("--help")
    assert r.returncode == 0
    assert "respond" in r.stdout and "--bundle" in r.stdout and "DIALOG_PORT" in r.stdout
    r = run("respond", "--help")
    assert r.returncode == 0 and "-n N" in r.stdout


def test_respond_command(tiny_bundle):
    r = run("respond", "--bundle", str(tiny_bundle), "hi there", "-n", "3", "--seed", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("# seed 1; 3 of 3 replies") and len(lines) == 5
    assert "in the order the reranker picked them" in lines[0] and lines[1].split()[:4] == ["#", "mmr", "rank", "score"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    mmr = [float(row[1]) for row in rows]
    assert mmr == sorted(mmr, reverse=True)  # the order shown is the order used
    r2 = run("respond", "--bundle", str(tiny_bundle), "hi there", "-n", "3", "--seed", "1")
    assert r2.stdout == r.stdout  # same seed, same replies


def test_respond_refuses_sampling_flags_with_greedy_decoding(tiny_bundle):
    r = run("respond", "--bundle", str(tiny_bundle), "hi there", "--temperature", "0.5")
    assert r.returncode == 2 and "strategy 'sample' only" in r.stderr and "Traceback" not in r.stderr


def test_respond_command_json(tiny_bundle):
    import json

    r = run("respond", "--bundle", str(tiny_bundle), "hello", "how are you", "-n", "2", "--strategy", "sample",
            "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["replies"]) == 2 and all("score" in x for x in out["replies"])


def test_respond_command_bad_bundle(tmp_path):
    r = run("respond", "--bundle", str(tmp_path / "missing"), "hi")
    assert r.returncode == 2 and "bundle folder not found" in r.stderr


def test_serve_without_bundle_fails_clearly(tmp_path):
    r = run("--bundle", str(tmp_path / "missing"), "--port", str(free_port()))
    assert r.returncode != 0 and "BundleError" in r.stderr and "missing" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_and_stop_by_signal(tiny_bundle, sig):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOG_")}
    env["DIALOG_PORT"] = "1"  # the flag below overrides it
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--bundle", str(tiny_bundle), "--port", str(port),
                             "--torch-threads", "1", "--drain-timeout-s", "5"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, 120, alive=lambda: proc.poll() is None)
        r = httpx.post(f"{url}/respond", json={"context": ["hi"], "n": 2}, timeout=10)
        assert r.status_code == 200 and r.json()["n_returned"] >= 1
        proc.send_signal(sig)
        # a stop asked for (SIGTERM from an orchestrator, Ctrl-C's SIGINT) drains and ends normally: status 0,
        # neither killed by the signal nor a KeyboardInterrupt traceback
        assert proc.wait(timeout=15) == 0
        log = proc.stdout.read()
        assert "draining" in log and "POST /respond 200" in log and "Application shutdown complete" in log
        assert "Traceback" not in log and "KeyboardInterrupt" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args", [["--port", "notaport"], ["respond"]])
def test_bad_arguments(args):
    r = run(*args)
    assert r.returncode == 2 and "usage:" in r.stderr


@pytest.mark.parametrize("flag, value, says", [
    ("--temperature", "0", "greater than 0"),
    ("--temperature", "10.5", "less than or equal to 10"),
    ("--temperature", "nan", "finite"),
    ("--temperature", "warm", "expected a number"),
    ("--top-k", "-1", "greater than or equal to 0"),
    ("--top-k", "100001", "less than or equal to 100000"),
    ("--top-k", "2.5", "expected a whole number"),
    ("--top-p", "0", "greater than 0"),
    ("--top-p", "1.5", "less than or equal to 1"),
    ("--top-p", "inf", "finite"),
    ("--latent-temperature", "-0.1", "greater than or equal to 0"),
    ("--latent-temperature", "11", "less than or equal to 10"),
    ("-n", "0", "greater than or equal to 1"),
    ("--seed", "-1", "greater than or equal to 0"),
    ("--seed", str(2**63 - 1), "less than"),
    ("--max-tokens", "0", "greater than or equal to 1"),
])
def test_respond_refuses_what_the_api_refuses(tiny_bundle, capsys, flag, value, says):
    """Every request flag of `respond` takes the API's range (app.schemas): one usage line, exit status 2,
    nothing printed on stdout and no model loaded; --max-tokens names itself, not the server's setting."""
    from app.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["respond", "--bundle", str(tiny_bundle), "hi there", "--strategy", "sample", flag, value])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"python -m app respond: error: argument {flag}: ") and says in last, err
    assert "DIALOG_" not in err


def test_respond_takes_the_bounds_themselves(tiny_bundle):
    from app.__main__ import respond_parser

    args = respond_parser().parse_args(["hi", "--temperature", "10", "--top-k", "100000", "--top-p", "1",
                                        "--latent-temperature", "0", "-n", "1", "--seed", str(2**63 - 2),
                                        "--max-tokens", "1"])
    assert (args.temperature, args.top_k, args.top_p, args.latent_temperature, args.n, args.seed,
            args.max_tokens) == (10.0, 100_000, 1.0, 0.0, 1, 2**63 - 2, 1)


def test_respond_sampling_flag_out_of_range_is_a_usage_error(tiny_bundle):
    """The command itself (issue 20): no traceback, no reply, exit status 2."""
    r = run("respond", "--bundle", str(tiny_bundle), "hi there", "--strategy", "sample", "--top-p", "0")
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("python -m app respond: error: argument --top-p:")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_make_serve_stops_without_a_make_error(tiny_bundle, tmp_path, sig):
    """`make serve` stopped by Ctrl-C (SIGINT to the terminal's process group) or by SIGTERM to make ends
    without make's "*** [serve] Terminated/Interrupt" line: the server it runs exits 0 after draining."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIALOG_", "MAKE"))}
    env.update(DIALOG_BUNDLE=str(tiny_bundle), DIALOG_TORCH_THREADS="1", DIALOG_WARMUP="false",
               DIALOG_DRAIN_GRACE_S="0")
    venv = tmp_path / "venv"  # -o: never (re)build the venv or its stamp; PY: this interpreter serves
    proc = subprocess.Popen(["make", "--no-print-directory", "-o", f"{venv}/.runtime", "-o", f"{venv}/bin/python",
                             f"VENV={venv}", f"PY={sys.executable}", f"PORT={port}", "serve"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", 120, alive=lambda: proc.poll() is None)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # what Ctrl-C does: the whole foreground group
        else:
            proc.send_signal(sig)  # make passes SIGTERM on to the recipe's process
        proc.wait(timeout=20)
        out = proc.stdout.read()
        assert "Application shutdown complete" in out, out[-2000:]
        assert "***" not in out and "Traceback" not in out, out[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_every_setting_has_its_flag():
    """The README: settings come from DIALOG_* variables "or the same flags of python -m app"."""
    from app.__main__ import SERVE_FLAGS, respond_parser, serve_parser
    from app.settings import Settings

    flags = {name for name, _, _ in SERVE_FLAGS}
    assert set(Settings.model_fields) - flags == {"warmup"}  # warmup is --no-warmup
    args = serve_parser().parse_args(["--anti-lm", "reply_lm", "--no-warmup"])
    assert args.anti_lm == "reply_lm" and args.warmup is False
    assert respond_parser().parse_args(["hi", "--anti-lm", "probes"]).anti_lm == "probes"


def test_serve_with_an_anti_lm_the_bundle_lacks_says_so_in_one_line(tiny_bundle):
    r = run("--bundle", str(tiny_bundle), "--anti-lm", "reply_lm", "--port", "0", "--no-warmup")
    assert r.returncode == 3, r.stderr
    assert "no reply language model" in r.stderr and "Traceback" not in r.stderr


def test_respond_with_an_anti_lm_the_bundle_lacks_says_so_in_one_line(tiny_bundle):
    r = run("respond", "--bundle", str(tiny_bundle), "--anti-lm", "reply_lm", "hi there")
    assert r.returncode == 2 and "no reply language model" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", [[], ["respond", "hi there"]], ids=["serve", "respond"])
@pytest.mark.parametrize("flags, environ, says", [
    (["--max-candidates", "4"], {}, "max_candidates (flag --max-candidates or DIALOG_MAX_CANDIDATES)"),
    ([], {"DIALOG_MAX_CANDIDATES": "15"}, "must be at least max_n (16; flag --max-n or DIALOG_MAX_N), so that any n"),
    (["--max-n", "8", "--max-candidates", "7"], {}, "at least max_n (8;"),
    ([], {"DIALOG_QUEUE_SIZE": "0"}, "DIALOG_QUEUE_SIZE): Input should be greater than or equal to 1, got "),
], ids=["max-candidates-flag", "max-candidates-env", "max-n-lowered", "queue-size-0"])
def test_settings_no_request_could_use_are_refused_at_start_up(tiny_bundle, command, flags, environ, says):
    """max_candidates below max_n would answer every request with an n above it (the default n = 5 included)
    with a 422 on candidates, a field the client never sent; a queue of 0 would fail the warm-up and answer
    503 forever. Both are a one-line usage error (exit 2) before any model loads, from either command."""
    port = [] if command else ["--port", str(free_port()), "--no-warmup"]
    r = run(*command, "--bundle", str(tiny_bundle), *port, *flags, timeout=30, **environ)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid setting: ") and says in lines[0], r.stderr


def test_max_candidates_may_equal_max_n(make_client):
    """The smallest max_candidates allowed still gives every allowed n its n candidates."""
    from app.settings import Settings

    assert Settings(max_n=4, max_candidates=4).max_candidates == 4
    with make_client(max_n=4, max_candidates=4) as c:
        for n in (1, 4):
            r = c.post("/respond", json={"context": ["hi there"], "n": n, "seed": 1})
            assert r.status_code == 200 and r.json()["candidates"] >= n, r.text


def test_the_help_names_the_variable_every_flag_mirrors(monkeypatch):
    """The help's "every flag mirrors DIALOG_<NAME>" is true of each flag: --no-warmup is DIALOG_WARMUP=false
    (there is no DIALOG_NO_WARMUP), and that variable does turn the warm-up off."""
    from app.__main__ import serve_parser
    from app.settings import Settings

    parser = serve_parser()
    for action in parser._actions:
        if action.dest != "help":
            assert action.dest in Settings.model_fields, action.option_strings
            env = "DIALOG_WARMUP=false" if action.dest == "warmup" else f"[env DIALOG_{action.dest.upper()}]"
            assert env in (action.help or ""), action.option_strings
    assert "--no-warmup" in (parser.epilog or "")
    r = run("--help")
    assert r.returncode == 0 and "DIALOG_WARMUP=false" in r.stdout and "DIALOG_NO_WARMUP" not in r.stdout
    monkeypatch.setenv("DIALOG_WARMUP", "false")
    assert Settings().warmup is False
