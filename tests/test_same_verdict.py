"""The same verdict every time: the sampled steps, and so the findings (codes, steps, evidence),
do not depend on how fast the machine runs the script or traindoctor's own hooks.

Two runs of one script with the same seed: one plain, one with every clock traindoctor could
read slowed down and its probes made 50x more expensive. Before the schedule was decided from
counted work (budget.py), the governor's interval for one run ranged from 80 to 342 between
identical runs, and findings at a threshold came and went.
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn as nn

import traindoctor as td
from traindoctor.probes.activations import ActivationsProbe


def _train(tmp_path, name: str) -> list[dict]:
    torch.manual_seed(0)
    # Findings near their thresholds: a sigmoid stack whose gradient fades with depth, a
    # ReLU layer whose bias kills most of its units, and a learning rate on the high side.
    layers: list[nn.Module] = [nn.Linear(20, 64), nn.ReLU()]
    for _ in range(8):
        layers += [nn.Linear(64, 64), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(64, 5))
    with torch.no_grad():
        model[0].bias.fill_(-2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 20, generator=g), torch.randint(0, 5, (32,), generator=g))]
    data = data * 4 + [(torch.randn(32, 20, generator=g), torch.randint(0, 5, (32,), generator=g))]
    with td.watch(model, opt, out_dir=tmp_path / name, console=False) as doc:
        for step in range(160):
            x, y = data[step % len(data)]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            doc.log(loss=loss)
    assert not doc.report.internal_errors
    return [json.loads(json.dumps(f.to_dict(), default=str)) for f in doc.report.findings]


def test_findings_are_identical_on_a_slow_clock_and_with_slow_probes(tmp_path, monkeypatch):
    quick = _train(tmp_path, "quick")
    assert quick, "the script must give findings to compare"

    real = time.perf_counter
    start = real()
    # Each reading of the clock advances 40x faster than real time, plus 5 ms: any decision
    # taken from a duration would see a machine 40x slower with a jittery timer.
    calls = [0]

    def slow_clock() -> float:
        calls[0] += 1
        return start + 40 * (real() - start) + 0.005 * calls[0]

    monkeypatch.setattr(time, "perf_counter", slow_clock)
    original_pre = ActivationsProbe._pre_hook

    def expensive_pre_hook(self, *args, **kwargs):
        hook = original_pre(self, *args, **kwargs)

        def slow(*a, **k):
            t0 = real()
            while real() - t0 < 2e-4:  # 0.2 ms of busy probe per module call
                pass
            return hook(*a, **k)

        return slow

    monkeypatch.setattr(ActivationsProbe, "_pre_hook", expensive_pre_hook)
    slow = _train(tmp_path, "slow")
    assert slow == quick
