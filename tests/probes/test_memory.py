"""MemoryProbe (TD505's graphs) and FrozenModesProbe (TD516's drift): oracle, bit identity,
detach."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.scenarios import get


def _run(tmp_path, keep: int | None, steps: int = 20, backward_total: bool = False):
    """Train a tiny model; keep the losses (with graph) of every step, the last `keep` ones,
    or back-propagate a running total."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kept: list[torch.Tensor] = []
    total: torch.Tensor | None = None
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(steps):
            opt.zero_grad()
            loss = model(torch.randn(8, 4)).pow(2).mean()
            if backward_total:
                total = loss if total is None else total + loss
                total.backward(retain_graph=True)
            else:
                loss.backward()
                kept.append(loss)
                if keep is not None:
                    del kept[:-keep]
            opt.step()
    return doc.report


def test_alive_graphs_match_the_references_kept(tmp_path):
    # Oracle: at step s the graphs of steps 1..s-2 are alive exactly when the loop keeps them.
    report = _run(tmp_path / "all", keep=None)
    series = dict(report.timeline.series("memory.graphs_alive"))
    for step, v in series.items():
        assert v["alive"] == max(0, step - 2), (step, v)
        assert v["dead"] == 0
    bounded = _run(tmp_path / "two", keep=2)
    for step, v in bounded.timeline.series("memory.graphs_alive"):
        # Losses of steps s-1 and s-2 are in the list at step s: one of them is "old".
        assert v["alive"] == (1 if step >= 3 else 0), (step, v)
        assert v["dead"] == max(0, step - 3)


def test_holder_line_and_rule(tmp_path):
    report = _run(tmp_path, keep=None)
    # kept.append(loss) is no torch call: no accumulation line, the backward line instead.
    assert not report.timeline.events("graph_holder")
    walk = report.timeline.events("graph_retained")[0]
    assert walk["backward_reaches"] == []
    assert "test_memory.py" in walk["backward_source"]
    f = next(f for f in report.findings if f.code == "TD505")
    assert f.severity.value == "warning"
    assert "test_memory.py" in f.where.source


def test_backward_through_running_total_is_an_error(tmp_path):
    report = _run(tmp_path, keep=None, backward_total=True)
    walk = report.timeline.events("graph_retained")[0]
    assert walk["backward_reaches"], walk
    holder = report.timeline.events("graph_holder")[0]
    assert "total + loss" in holder["code"]
    f = next(f for f in report.findings if f.code == "TD505")
    assert f.severity.value == "error"


def test_accumulation_line_found_in_scenario(tmp_path):
    from traindoctor.scenarios.demo import run_scenario

    report = run_scenario(get("loss_total_keeps_graph"), out_dir=tmp_path, watch=True)
    holder = report.timeline.events("graph_holder")[0]
    assert "total_loss += loss" in holder["code"]
    assert report.timeline.facts["memory"]["host_measure"]
    assert report.timeline.series("memory.host_rss_mb")


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _first(result):
    return result[0] if isinstance(result, tuple) else result


def test_bit_identical_with_and_without_the_probes(tmp_path):
    for name in ("loss_total_keeps_graph", "frozen_bn_backbone_train_mode"):
        s = get(name)
        plain = _first(s.train(steps=s.steps))
        docs: list = []

        def watching(model, optimizer, scaler=None, docs=docs):
            docs.append(td.watch(model, optimizer, out_dir=tmp_path, console=False))
            return docs[-1]

        watched = _first(s.train(steps=s.steps, watch=watching))
        docs[0].close()
        for a, b in zip(_params(plain), _params(watched)):
            assert torch.equal(a, b), name
        for a, b in zip(plain.buffers(), watched.buffers()):
            assert torch.equal(a, b), name


def test_detach_leaves_no_mode_on_the_stack(tmp_path):
    _run(tmp_path, keep=None)
    assert torch._C._len_torch_function_stack() == 0


def _frozen_run(tmp_path, backbone_eval: bool, dropout: bool = False):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3 if dropout else 0))
    model = nn.Sequential(backbone, nn.Linear(8, 2))
    for p in backbone.parameters():
        p.requires_grad = False
    opt = torch.optim.SGD(model[1].parameters(), lr=0.1)
    bn = backbone[1]
    snaps = []
    with td.watch(model, opt, out_dir=tmp_path, console=False) as doc:
        for _ in range(3):
            model.train()
            if backbone_eval:
                backbone.eval()
            snaps.append(torch.cat([bn.running_mean, bn.running_var]).clone())
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 2, (16,))).backward()
            opt.step()
    snaps.append(torch.cat([bn.running_mean, bn.running_var]).clone())
    return doc.report, snaps


def test_frozen_bn_drift_oracle(tmp_path):
    report, snaps = _frozen_run(tmp_path / "train", backbone_eval=False)
    drift = dict(report.timeline.series("modes.frozen_bn_drift"))
    # Drift at step 2's optimizer step: stats after step 2's forward vs after step 1's.
    expected = ((snaps[2] - snaps[1]).norm() / snaps[1].norm()).item()
    assert abs(drift[2]["0.1"] - expected) < 1e-6 * max(1.0, expected)
    assert drift[2]["0.1"] > 0
    assert "TD516" in {f.code for f in report.findings}
    quiet, _ = _frozen_run(tmp_path / "eval", backbone_eval=True)
    assert all(v["0.1"] == 0.0 for _, v in quiet.timeline.series("modes.frozen_bn_drift"))
    assert "TD516" not in {f.code for f in quiet.findings}


def test_frozen_dropout_without_graph_is_seen(tmp_path):
    report, _ = _frozen_run(tmp_path, backbone_eval=False, dropout=True)
    event = report.timeline.events("frozen_modules")[-1]["modules"]["0"]
    assert event["dropout_train"] == ["0.2"]
    assert event["output_requires_grad"] is False
