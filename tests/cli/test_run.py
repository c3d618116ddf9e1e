"""`traindoctor run`: the unmodified script runs as `python script.py` would, and the run directory
is always written (normal end, --max-steps, exception, SIGINT, SIGTERM)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import traindoctor

from .conftest import line_of, run_all, td, td_signal, write

# A script with a classic bug: the head is left out of the optimizer (TD103). It also records
# how it was started, and prints to stdout in three ways (--json must keep stdout clean).
BUGGY = """
import json, os, sys
import torch

with open("facts.json", "w") as fh:
    json.dump({"argv": sys.argv, "path0": sys.path[0], "name": __name__}, fh)
print("script print")
sys.stdout.write("script sys.stdout.write\\n")
os.write(1, b"script fd write\\n")

torch.manual_seed(0)
body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh())
head = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(body.parameters(), lr=0.1)  # BUG: head left out
steps = int(sys.argv[sys.argv.index("--some-script-arg") + 1])
for step in range(steps):
    loss = head(body(torch.randn(16, 4))).pow(2).mean()
    opt.zero_grad()
    head.zero_grad()
    loss.backward()
    opt.step()
"""

HELPERS = """
import torch

def make():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.05)
"""

MODULE = """
import json, sys
import torch
from .helpers import make

with open("facts.json", "w") as fh:
    json.dump({"argv": sys.argv, "path0": sys.path[0], "name": __name__}, fh)
model, opt = make()
w = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
for step in range(4):
    x = torch.randn(32, 4)
    loss = (model(x) - x @ w.T).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
sys.exit(7)
"""

# lr far too small: the loss does not move (TD108, a warning); the script's own exit code is 7.
WARN = """
import sys
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=1e-7)
x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
for step in range(60):
    i = torch.randint(0, 256, (32,))
    loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
    opt.zero_grad()
    loss.backward()
    opt.step()
sys.exit(7)
"""

# Trains forever; it also moves to another folder first (the run directory must not follow it).
ENDLESS = """
import os
import torch

os.makedirs("elsewhere")
os.chdir("elsewhere")
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
while True:
    loss = (model(torch.randn(8, 4)) - 1).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
"""

NO_STEP = """
import torch

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
while True:
    loss = (model(torch.randn(8, 4)) - 1).pow(2).mean()
    opt.zero_grad()
    loss.backward()  # BUG: opt.step() is never called
"""

CRASH = """
import torch

def check(step):
    if step == 3:
        raise RuntimeError("boom at step three")  # raise here

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(1, 10):
    loss = (model(torch.randn(8, 4)) - 1).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    check(step)  # call here
"""

# Trains, says READY after step 3, then keeps training slowly until a signal arrives.
SIGNALLED = """
import signal
import time
import torch

# As from a terminal: Ctrl-C raises KeyboardInterrupt even when this test's runner was started
# with SIGINT ignored (an asynchronous command of a shell without job control inherits SIG_IGN).
signal.signal(signal.SIGINT, signal.default_int_handler)

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
step = 0
while True:
    loss = (model(torch.randn(8, 4)) - 1).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    if step == 3:
        print("READY", flush=True)
    if step >= 3:
        time.sleep(0.02)
"""


def _folder(factory, name: str, files: dict[str, str]) -> Path:
    folder = factory.mktemp(name)
    for fname, text in files.items():
        write(folder, fname, text)
    return folder


def _report_chain(folder: Path):
    """The buggy run with --out, --json and --fail-on, then `report DIR` (after deleting
    report.md) and `report --rediagnose --json DIR`."""
    first = td(
        folder,
        *("run", "--out", "custom", "--json", "--fail-on", "error"),
        *("train.py", "--some-script-arg", "3"),
    )
    run_dir = first.run_dir("custom").relative_to(folder)
    md = folder / run_dir / "report.md"
    report_md = md.read_text()
    findings = first.findings("custom")  # read now: --rediagnose rewrites findings.json
    md.unlink()
    rendered = td(folder, "report", str(run_dir))
    return {
        "run": first,
        "findings": findings,
        "report_md": report_md,
        "rendered": rendered,
        "rerendered_md": md.read_text() if md.exists() else None,
        "rediagnosed": td(folder, "report", "--rediagnose", "--json", str(run_dir)),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    f = {
        name: _folder(tmp_path_factory, name, files)
        for name, files in {
            "buggy": {"train.py": BUGGY},
            "module": {"pkg/__init__.py": "", "pkg/helpers.py": HELPERS, "pkg/train.py": MODULE},
            "warn_fail_warning": {"train.py": WARN},
            "warn_fail_error": {"train.py": WARN},
            "endless": {"loop.py": ENDLESS},
            "no_step": {"nostep.py": NO_STEP},
            "crash": {"boom.py": CRASH},
            "sigint": {"sig.py": SIGNALLED},
            "sigterm": {"sig.py": SIGNALLED},
        }.items()
    }
    return run_all(
        {
            "buggy": lambda: _report_chain(f["buggy"]),
            "module": lambda: td(
                f["module"], "run", "--fail-on", "error", "-m", "pkg.train", "--lr", "3"
            ),
            "warn_fail_warning": lambda: td(
                f["warn_fail_warning"], "run", "--fail-on", "warning", "train.py"
            ),
            "warn_fail_error": lambda: td(
                f["warn_fail_error"], "run", "--fail-on", "error", "train.py"
            ),
            "endless": lambda: td(f["endless"], "run", "--max-steps", "7", "loop.py"),
            "no_step": lambda: td(f["no_step"], "run", "--max-steps", "5", "nostep.py"),
            "crash": lambda: td(f["crash"], "run", "boom.py"),
            "sigint": lambda: td_signal(f["sigint"], signal.SIGINT, "run", "sig.py"),
            "sigterm": lambda: td_signal(f["sigterm"], signal.SIGTERM, "run", "sig.py"),
        }
    )


# -- the script runs as `python train.py` would ----------------------------------------------
def test_script_runs_with_its_own_argv_path_and_main(results):
    b = results["buggy"]
    r = b["run"]
    facts = json.loads((r.cwd / "facts.json").read_text())
    assert facts["argv"] == ["train.py", "--some-script-arg", "3"]
    assert Path(facts["path0"]).resolve() == r.cwd.resolve()
    assert facts["name"] == "__main__"


def test_json_prints_findings_alone_on_stdout_and_out_picks_the_folder(results):
    b = results["buggy"]
    r = b["run"]
    assert r.rc == 3, r  # --fail-on error, and TD103 is an error
    assert not (r.cwd / "traindoctor-runs").exists()
    printed = json.loads(r.stdout)  # stdout is the JSON document and nothing else
    assert printed == b["findings"]
    # What the script wrote to stdout, at every level, went to stderr instead.
    for text in ("script print", "script sys.stdout.write", "script fd write"):
        assert text in r.stderr


def test_run_directory_holds_the_three_files(results):
    r = results["module"]  # run without --out: the default folder
    run_dir = r.run_dir()
    assert run_dir.parent == r.cwd / "traindoctor-runs"
    for name in ("findings.json", "report.md", "timeline.jsonl"):
        assert (run_dir / name).is_file(), name
    for line in (run_dir / "timeline.jsonl").read_text().splitlines():
        json.loads(line)
    assert not list(run_dir.glob(".*.tmp")), "atomic writes left temp files behind"


def test_findings_json_follows_schema_1(results):
    data = results["buggy"]["findings"]
    assert data["schema"] == 1
    assert data["tool"] == "traindoctor"
    assert data["version"] == traindoctor.__version__
    assert data["steps"] == 3
    assert data["framework"] == "plain"
    assert isinstance(data["findings"], list) and data["findings"]
    documented = {"code", "name", "severity", "title", "step", "evidence", "cause", "fix", "where"}
    severities = set()
    for f in data["findings"]:
        assert documented <= set(f)
        assert f["code"].startswith("TD") and len(f["code"]) == 5
        assert f["name"] == f["name"].lower() and " " not in f["name"]
        assert f["severity"] in ("error", "warning", "info")
        assert isinstance(f["title"], str) and f["title"]
        assert f["step"] is None or isinstance(f["step"], int)
        assert isinstance(f["evidence"], dict)
        assert isinstance(f["cause"], str) and isinstance(f["fix"], str)
        assert set(f["where"]) == {"module", "params", "op", "source"}
        assert isinstance(f["where"]["params"], list)
        assert all(isinstance(p, str) for p in f["where"]["params"])
        for key in ("module", "op", "source"):
            assert f["where"][key] is None or isinstance(f["where"][key], str)
        severities.add(f["severity"])
    assert "error" in severities
    assert data["status"] == "failing"


def test_buggy_script_is_diagnosed_with_code_and_source(results):
    b = results["buggy"]
    r = b["run"]
    codes = [f["code"] for f in b["findings"]["findings"]]
    assert codes[0] == "TD103", codes
    f = b["findings"]["findings"][0]
    assert f["severity"] == "error"
    assert len(f["where"]["params"]) == 2
    assert all(p.endswith((".weight", ".bias")) for p in f["where"]["params"])
    assert f["where"]["source"] == f"train.py:{line_of(r.cwd / 'train.py', 'BUG: head left out')}"
    md = b["report_md"]
    assert "TD103" in md and "params-not-in-optimizer" in md
    assert "TD103 params-not-in-optimizer" in r.stderr
    # The console summary ends with the report's path, whole.
    run_dir = r.run_dir("custom").relative_to(r.cwd)
    assert r.stderr.rstrip().splitlines()[-1] == f"report: {run_dir}/report.md"


def test_module_runs_like_python_dash_m_and_exit_code_passes_through(results):
    r = results["module"]
    assert r.rc == 7, r  # healthy for --fail-on error: the script's own sys.exit(7)
    facts = json.loads((r.cwd / "facts.json").read_text())
    assert facts["name"] == "__main__"
    assert Path(facts["argv"][0]).resolve() == (r.cwd / "pkg" / "train.py").resolve()
    assert facts["argv"][1:] == ["--lr", "3"]
    assert Path(facts["path0"]).resolve() == r.cwd.resolve()
    data = r.findings()
    assert data["steps"] == 4
    assert "error" not in {f["severity"] for f in data["findings"]}, data["findings"]


def test_fail_on_warning_exits_3(results):
    r = results["warn_fail_warning"]
    assert r.rc == 3, r
    assert r.finding("TD108")["severity"] == "warning"


def test_fail_on_error_ignores_warnings_and_passes_the_exit_code(results):
    r = results["warn_fail_error"]
    assert r.rc == 7, r
    assert r.findings()["status"] == "warning"


# -- --max-steps -----------------------------------------------------------------------------
def test_max_steps_ends_an_endless_loop_cleanly(results):
    r = results["endless"]
    assert r.rc == 0, r
    data = r.findings()
    assert data["steps"] == 7
    assert data["run"]["ended"] == "max_steps"
    assert "--max-steps" in r.report_md()
    assert "Traceback" not in r.stderr
    assert not (r.cwd / "elsewhere" / "traindoctor-runs").exists()


def test_max_steps_stops_a_script_whose_optimizer_never_steps(results):
    r = results["no_step"]
    assert r.rc == 0, r
    f = r.finding("TD105")
    assert f["severity"] == "error"
    assert f["where"]["source"] == f"nostep.py:{line_of(r.cwd / 'nostep.py', 'loss.backward()')}"
    assert r.findings()["run"]["ended"] == "max_steps"
    assert "Traceback" not in r.stderr


# -- the report is written however the script ends ------------------------------------------
def test_exception_is_reported_and_reraised(results):
    r = results["crash"]
    assert r.rc == 1, r
    raise_line = line_of(r.cwd / "boom.py", "# raise here")
    # The user's traceback, as python prints it, without traindoctor's own frames.
    assert "Traceback (most recent call last)" in r.stderr
    assert f'File "{r.cwd / "boom.py"}", line {raise_line}, in check' in r.stderr  # absolute
    assert "RuntimeError: boom at step three" in r.stderr
    assert "runner.py" not in r.stderr and "runpy" not in r.stderr
    data = r.findings()
    assert data["steps"] == 3
    run = data["run"]
    assert run["ended"] == "exception"
    assert run["exception"] == "RuntimeError: boom at step three"
    assert run["source"] == f"boom.py:{raise_line}"
    md = r.report_md()
    assert "RuntimeError: boom at step three" in md
    assert f"boom.py:{raise_line}" in md
    assert "step 4" in md and "after 3 optimizer steps" in md


@pytest.mark.parametrize(
    ("name", "code", "sig"), [("sigint", 130, "SIGINT"), ("sigterm", 143, "SIGTERM")]
)
def test_signal_writes_the_report(results, name, code, sig):
    r = results[name]
    assert r.rc == code, r
    data = r.findings()
    assert data["run"]["ended"] == "interrupted"
    assert data["run"]["signal"] == sig
    assert data["steps"] >= 3
    md = r.report_md()
    assert "interrupted" in md and sig in md
    assert (r.run_dir() / "timeline.jsonl").is_file()


# -- traindoctor report DIR --------------------------------------------------------------------
def test_report_rerenders_a_run_directory(results):
    b = results["buggy"]
    rendered = b["rendered"]
    assert rendered.rc == 0, rendered
    assert "TD103 params-not-in-optimizer" in rendered.stdout
    assert b["rerendered_md"] == b["report_md"]


def test_report_rediagnose_gives_the_same_codes(results):
    b = results["buggy"]
    rediagnosed = b["rediagnosed"]
    assert rediagnosed.rc == 0, rediagnosed
    again = json.loads(rediagnosed.stdout)
    assert sorted(f["code"] for f in again["findings"]) == sorted(
        f["code"] for f in b["findings"]["findings"]
    )
    assert again["steps"] == 3
