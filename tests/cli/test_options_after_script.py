"""traindoctor's own options after the script (`traindoctor check train.py --fail-on error`):
moved before it when the script cannot take them, left to the script when it may."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from traindoctor.cli import _hoist_options

SCRIPT_WITH_LR = """\
import argparse
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float)
p.add_argument("--json", action="store_true")
print("args", p.parse_args())
"""


def test_moves_only_what_the_script_cannot_take(tmp_path, capsys):
    plain = tmp_path / "t.py"
    plain.write_text("print('hi')\n")
    argv = ["check", str(plain), "--fail-on", "error", "--output-format=github", "--lr", "1"]
    assert _hoist_options(argv) == [
        "check",
        "--fail-on",
        "error",
        "--output-format=github",
        str(plain),
        "--lr",
        "1",
    ]
    assert "taken as traindoctor's" in capsys.readouterr().err

    own = tmp_path / "own.py"
    own.write_text(SCRIPT_WITH_LR)
    # The script has a --json of its own: it stays the script's; --max-steps does not.
    argv = ["run", "--out", "o", str(own), "--json", "--max-steps", "3"]
    assert _hoist_options(argv) == ["run", "--out", "o", "--max-steps", "3", str(own), "--json"]


def test_leaves_modules_separators_and_other_commands(tmp_path):
    plain = tmp_path / "t.py"
    plain.write_text("print('hi')\n")
    for argv in (
        ["run", "-m", "pkg.train", "--json"],
        ["report", "dir", "--json"],
        ["run", str(plain), "--", "--json"],
        ["run", "missing.py", "--json"],
        ["run", str(plain)],
    ):
        assert _hoist_options(list(argv)) == argv


def test_issue_command_annotates_the_line(tmp_path):
    """The issue's own command line, options after the script: exit 3, the line annotated."""
    (tmp_path / "train.py").write_text(
        "import torch\n"
        "torch.manual_seed(0)\n"
        "m = torch.nn.Linear(4, 2)\n"
        "opt = torch.optim.SGD(m.parameters(), lr=0.1)\n"
        "x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))\n"
        "for _ in range(12):\n"
        "    loss = torch.nn.functional.cross_entropy(m(x), y)\n"
        "    loss.backward()\n"
        "    opt.step()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAINDOCTOR_PLOTS": "0"}
    env.pop("GITHUB_WORKSPACE", None)
    r = subprocess.run(
        [sys.executable, "-m", "traindoctor", "run", "train.py", "--fail-on", "error"]
        + ["--output-format", "github"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 3, r.stderr
    assert "::error title=traindoctor (TD106),file=train.py,line=9" in r.stdout, r.stdout


def test_script_keeps_its_own_option(tmp_path):
    (tmp_path / "own.py").write_text(SCRIPT_WITH_LR)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAINDOCTOR_PLOTS": "0"}
    r = subprocess.run(
        [sys.executable, "-m", "traindoctor", "run", "--json", "own.py", "--lr", "2", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (
        "Namespace(lr=2.0, json=True)" in r.stderr
    )  # the script's stdout goes to stderr under --json
    json.loads(r.stdout)
