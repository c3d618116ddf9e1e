"""torch.compile while attached: no graph break, no recompile after the first steps, the same
parameters as without traindoctor, and the findings that need no module hook still made.

Before (an 8-layer MLP compiled, traindoctor attached): 32 graph breaks on step 1 (hooks
calling time.perf_counter, a RemovableHandle, tensors with grad_fn) and 32 unique graphs, the
recompile limit hit. The dynamo backend is "eager" here: graph breaks and recompiles are
decided by dynamo, before any backend runs (bench/compiled_overhead.py times inductor).
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torch.nn as nn

import traindoctor as td

torch._dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402

STEPS = 24


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(32, 5))


def _train(how: str, watched: bool, tmp_path, zero_grad: bool = True):
    """(params, graph breaks, unique graphs, unique graphs after step 3, doctor)."""
    torch._dynamo.reset()
    counters.clear()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    if how == "wrapper":
        run = torch.compile(model, backend="eager")
    elif how == "passed":
        model = run = torch.compile(model, backend="eager")
    elif how == "in-place":
        model.compile(backend="eager")
        run = model
    else:  # a compiled function that calls the model

        @torch.compile(backend="eager")
        def run(x):
            return model(x)

    doc = td.watch(model, opt, out_dir=tmp_path, console=False) if watched else None
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 32, generator=g), torch.randint(0, 5, (16,), generator=g))] * 4
    graphs_at_3 = 0
    for step in range(STEPS):
        x, y = data[step % 4]
        if zero_grad:
            opt.zero_grad()
        nn.functional.cross_entropy(run(x), y).backward()
        opt.step()
        if step == 2:
            graphs_at_3 = counters["stats"]["unique_graphs"]
    if doc is not None:
        doc.close()
        assert not doc.report.internal_errors
    params = [p.detach().clone() for p in model.parameters()]
    breaks = sum(counters["graph_break"].values())
    graphs = counters["stats"]["unique_graphs"]
    return params, breaks, graphs, graphs - graphs_at_3, doc


@pytest.mark.parametrize("how", ["wrapper", "passed", "in-place", "function"])
def test_no_graph_break_and_no_recompile_after_the_first_steps(how, tmp_path):
    plain, plain_breaks, plain_graphs, _, _ = _train(how, False, tmp_path)
    watched, breaks, graphs, later, doc = _train(how, True, tmp_path)
    assert plain_breaks == breaks == 0
    assert later == 0, "traindoctor recompiled the model after step 3"
    # Known compiled before the first forward: never recompiled. Found compiled at step 1's
    # end: its hooks go at once, one recompile at step 2. (module.compile() with torch 2.13
    # can leave the module running eagerly plainly: 0 graphs, and 1 while watched.)
    assert graphs <= plain_graphs + (0 if how == "passed" else 1)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    if plain_graphs:
        assert doc.timeline.facts["compiled_models"] == ["<model>"]
    names = {n for n in doc.report.findings[0].where.params} if doc.report.findings else set()
    assert not any("_orig_mod" in n for n in names)


def test_findings_without_module_hooks_are_still_made_on_a_compiled_model(tmp_path):
    *_, doc = _train("wrapper", True, tmp_path, zero_grad=False)
    assert "TD106" in [f.code for f in doc.report.findings]  # grads never zeroed


def test_zero_code_run_of_a_compiled_script_with_the_loss_inside_forward(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch, torch.nn as nn, torch.nn.functional as F
            from torch._dynamo.utils import counters

            class LM(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.emb = nn.Embedding(40, 16)
                    self.ln = nn.LayerNorm(16)
                    self.head = nn.Linear(16, 40)

                def forward(self, idx, targets):
                    logits = self.head(self.ln(self.emb(idx)))
                    return logits, F.cross_entropy(logits.view(-1, 40), targets.view(-1))

            torch.manual_seed(0)
            model = LM()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            model = torch.compile(model, backend="eager")
            for step in range(12):
                x = torch.randint(0, 40, (4, 8))
                _, loss = model(x, torch.roll(x, 1, 1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            print("BREAKS", sum(counters["graph_break"].values()))
            print("GRAPHS", counters["stats"]["unique_graphs"])
            """
        )
    )
    import subprocess

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "traindoctor",
            "run",
            "--out",
            str(tmp_path / "runs"),
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BREAKS 0" in out.stdout
    graphs = int(out.stdout.split("GRAPHS")[1].split()[0])
    assert graphs <= 3  # global hooks of zero-code mode go at attach and after: first steps


def test_a_model_compiled_earlier_in_the_process_does_not_make_later_models_compiled(tmp_path):
    """dynamo's graph counter is process-wide: a model compiled and trained before (a notebook
    cell, an earlier test) made every idle model of a later zero-code run 'compiled', and its
    findings were lost (the planted TD302 cut among them)."""
    from traindoctor.scenarios import get
    from traindoctor.scenarios.demo import run_scenario

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    compiled = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        loss = compiled(torch.randn(4, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = run_scenario(get("aux_loss_no_grad"), out_dir=tmp_path, watch=False)
    assert report.findings[0].code == "TD302"
    assert report.findings[0].evidence["cut"] == "no_grad"
