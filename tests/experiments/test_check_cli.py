"""`traindoctor check` runs the experiments on a copy (TD701-TD704 in findings.json);
TRAINDOCTOR_EXPERIMENTS=0 turns them off; `run` does not run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import torch, torch.nn as nn, torch.nn.functional as F
    torch.manual_seed(0)
    x, y = torch.randn(128, 8), torch.randint(0, 4, (128,))
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(30):
        xb, yb = x[step % 4 * 32:][:32], y[step % 4 * 32:][:32]
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    """
)


def codes(tmp_path, command: str, **env: str) -> list[str]:
    (tmp_path / "train.py").write_text(SCRIPT)
    full = {**os.environ, "OMP_NUM_THREADS": "1", "TRAINDOCTOR_PLOTS": "0", **env}
    if "TRAINDOCTOR_EXPERIMENTS" not in env:
        full.pop("TRAINDOCTOR_EXPERIMENTS", None)
    p = subprocess.run(
        [sys.executable, "-m", "traindoctor", command, "--max-steps", "10", "--json", "train.py"],
        cwd=tmp_path,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return [f["code"] for f in json.loads(p.stdout)["findings"]]


@pytest.mark.parametrize(
    "command, env, expected",
    [
        ("check", {}, {"TD701", "TD702", "TD703", "TD704"}),
        ("check", {"TRAINDOCTOR_EXPERIMENTS": "0"}, set()),
        ("run", {}, set()),
    ],
    ids=["check", "check-off", "run"],
)
def test_check_runs_the_experiments(tmp_path, command, env, expected):
    found = {c for c in codes(tmp_path, command, **env) if c.startswith("TD7")}
    assert found == expected
