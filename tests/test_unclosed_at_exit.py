"""A `td.watch()` the script never closed: at exit its last steps reach the disk and one line
says nothing was diagnosed and how to get the report (before: silence, and the steps since the
last flush were lost)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import torch, torch.nn as nn, torch.nn.functional as F
    import traindoctor as td
    m = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    doc = td.watch(m, opt, out_dir="runs", console=False)
    for s in range(30):
        loss = F.cross_entropy(m(torch.randn(16, 10)), torch.randint(0, 2, (16,)))
        opt.zero_grad(); loss.backward(); opt.step()
    print("done")
    """
)


def test_unclosed_watch_says_so_at_exit_and_keeps_its_steps(tmp_path):
    (tmp_path / "s.py").write_text(SCRIPT)
    r = subprocess.run(
        [sys.executable, "s.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "was not closed, so nothing was diagnosed" in r.stderr
    assert "traindoctor report" in r.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    lines = (run_dir / "timeline.jsonl").read_text()
    assert '"step": 30' in lines or '"step":30' in lines
