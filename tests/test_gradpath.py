"""explain_gradients and the GradientPath: measured on small graphs, gradients unchanged."""

from __future__ import annotations

import pytest
import torch

import traindoctor as td
from traindoctor.errors import UsageError
from traindoctor.gradpath import BLOCKS, MASK, PASSES, Walk


def _loss(model, x, mask):
    y = model(x)
    y = torch.nan_to_num(y)  # finite: passes gradient 1
    y = y * mask  # 0/1 mask: zeroes the padded entries only
    return (y * 10).clamp(-1, 1).mean()


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    x = torch.randn(16, 4)
    mask = (torch.rand(16, 4) > 0.3).float()
    return model, x, mask


def test_grads_equal_a_plain_backward_and_hooks_are_removed():
    model, x, mask = _setup()
    _loss(model, x, mask).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    loss = _loss(model, x, mask)
    path = td.explain_gradients(loss)
    assert all(torch.equal(a, p.grad) for a, p in zip(plain, model.parameters()))
    assert len(path.nodes) >= 5
    # hooks removed: a second backward through a fresh graph runs no hook of ours
    walk_nodes = [loss.grad_fn]
    assert all(not getattr(n, "_backward_hooks", None) for n in walk_nodes)


def test_nan_to_num_passes_and_mask_is_by_design_and_clamp_measured():
    model, x, mask = _setup()
    with td.trace_lines():
        loss = _loss(model, x, mask)
    path = td.explain_gradients(loss)
    (n2n,) = path.find("nan_to_num")
    assert n2n.zeroed == 0.0 and n2n.verdict == PASSES
    assert n2n.ratio == pytest.approx(1.0)
    masks = [n for n in path.find("mul") if n.mask]
    assert masks and masks[0].verdict == MASK
    (clamp,) = path.find("clamp")
    assert clamp.zeroed is not None and 0 < clamp.zeroed <= 1
    assert clamp.source and clamp.source.endswith("test_gradpath.py:17")
    text = str(path)
    assert "clamp" in text and "nan_to_num" in text and "verdict" in text


def test_saturated_clamp_blocks_and_round_blocks():
    w = torch.randn(100, requires_grad=True)
    path = td.explain_gradients(((w + 10).clamp(-1, 1)).sum() + w.round().sum())
    assert path.find("clamp")[0].verdict == BLOCKS
    assert path.find("clamp")[0].zeroed == pytest.approx(1.0)
    assert path.find("round")[0].verdict == BLOCKS


def test_where_constant_branch_blocks():
    w = torch.randn(50, requires_grad=True)
    path = td.explain_gradients(torch.where(w > 100, w, torch.zeros_like(w)).sum() + w.sum())
    (where,) = path.find("where")
    assert where.verdict == BLOCKS and where.zeroed == 1.0


def test_where_with_two_trained_branches_routes_and_does_not_block():
    """ArcFace's `where(one_hot, cos(theta + m), cos)`: each element's gradient goes to one of
    two branches that both require grad; nothing is lost, even where one branch gets 5%."""
    z = torch.randn(64, 20, requires_grad=True)
    pick = torch.nn.functional.one_hot(torch.randint(0, 20, (64,)), 20).bool()
    path = td.explain_gradients(torch.where(pick, torch.cos(z + 0.3), torch.cos(z)).sum())
    (where,) = path.find("where")
    assert where.zeroed == 0.0 and where.verdict == PASSES
    # One trained branch and a constant one still blocks where the constant is chosen.
    path = td.explain_gradients(torch.where(pick, torch.zeros_like(z), z * 2).sum())
    (where,) = path.find("where")
    assert where.zeroed == pytest.approx(0.05, abs=0.01)


def test_detached_part_is_marked_and_params_restrict():
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    path = td.explain_gradients(a.sum() + b.sum().detach(), params=[a])
    assert path.nodes[0].detached_input
    assert a.grad is not None and b.grad is None


def test_no_lines_without_trace_lines_and_usage_errors():
    w = torch.randn(3, requires_grad=True)
    path = td.explain_gradients((w * 2).sum())
    assert all(n.source is None for n in path.nodes)
    assert "trace_lines" in str(path)
    with pytest.raises(UsageError):
        td.explain_gradients(torch.ones(()))
    with pytest.raises(UsageError):
        td.explain_gradients(1.0)


def test_rich_rendering():
    from rich.console import Console

    w = torch.randn(3, requires_grad=True)
    console = Console(record=True, width=120)
    console.print(td.explain_gradients((w.clamp(0, 1) * 2).sum()))
    assert "clamp" in console.export_text()


def test_walk_is_linear_in_nodes():
    w = torch.randn(4, requires_grad=True)
    x = w
    for _ in range(3000):
        x = x * 1.0001
    walk = Walk(x.sum())
    assert len(walk.nodes) >= 3000
    x.sum().backward()
    walk.remove()


def test_hooks_removed_after_watch_walk(tmp_path):
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    loss = model(torch.randn(8, 4)).clamp(-100, 100).mean()
    node = loss.grad_fn
    loss.backward(retain_graph=True)
    opt.step()
    report = doc.close()
    events = report.timeline.events("gradient_path")
    assert events and events[0]["step"] == 1
    # the node hooks are gone: a second backward over the same graph is not recorded
    torch.autograd.backward(loss)
    assert len(report.timeline.events("gradient_path")) == len(events)
    assert node is not None


def test_symptom_schedules_a_walk_on_the_next_step_and_report_renders(tmp_path):
    from traindoctor.findings import Finding, Severity, Where

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    for step in range(1, 7):
        loss = model(torch.randn(8, 4)).clamp(-0.01, 0.01).mean()
        loss.backward()
        if step == 3:
            doc.findings.append(
                Finding("TD108", "loss-not-decreasing", Severity.WARNING, "t", 3, {}, Where())
            )
        opt.step()
        opt.zero_grad()
    report = doc.close()
    steps = [e["step"] for e in report.timeline.events("gradient_path")]
    assert steps == [1, 4]
    md = (report.run_dir / "report.md").read_text()
    assert "## Gradient path" in md and "`clamp`" in md


def test_zeroed_fraction_matches_brute_force_and_batched_flushes_agree(monkeypatch):
    import traindoctor.gradpath as gradpath

    torch.manual_seed(1)
    w = torch.randn(40, 30, requires_grad=True)
    upstream = (torch.rand(40, 30) > 0.25).float()  # entries with no gradient coming in
    scaled = w * 3
    clamped = scaled.clamp(-1, 1)
    loss = (clamped * upstream).sum()
    carried = upstream != 0
    expected = (carried & (scaled.detach().abs() > 1)).sum() / carried.sum()
    path = td.explain_gradients(loss)
    (clamp,) = path.find("clamp")
    assert clamp.zeroed == pytest.approx(expected.item(), abs=1e-6)
    assert clamp.grad_in == pytest.approx(upstream.norm().item(), rel=1e-5)
    # flushing the pending gradients every tensor gives the same numbers
    monkeypatch.setattr(gradpath, "FLUSH_TENSORS", 1)
    w.grad = None
    again = td.explain_gradients((w * 3).clamp(-1, 1).mul(upstream).sum())
    (clamp2,) = again.find("clamp")
    assert (clamp2.zeroed, clamp2.grad_in, clamp2.grad_out) == pytest.approx(
        (clamp.zeroed, clamp.grad_in, clamp.grad_out)
    )


def test_focused_walk_hooks_fewer_nodes_and_keeps_every_verdict():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(20)])
    x = torch.randn(16, 8)
    mask = (torch.rand(16, 8) > 0.3).float()
    out = model(x)
    with td.trace_lines():
        loss = _loss(torch.nn.Identity(), out, mask)
    full = td.explain_gradients(loss)
    out = model(x)
    with td.trace_lines():
        loss = _loss(torch.nn.Identity(), out, mask)
    walk = Walk(loss, focus=True)
    loss.backward()
    focused = walk.finish()
    assert focused.visited == full.visited and len(focused.nodes) < len(full.nodes) / 4
    judged = [(n.op, n.verdict, n.zeroed, n.source) for n in full.nodes if n.verdict != PASSES]
    kept = [(n.op, n.verdict, n.zeroed, n.source) for n in focused.nodes if n.verdict != PASSES]
    assert judged and kept == judged
    assert "that can block measured" in str(focused)


def test_focused_walk_skips_scaling_by_a_nonzero_number_but_not_by_zero():
    # 0.1 * tanh(h) in every block of a deep residual net: nothing to measure there (its
    # gradient has the zeros of the one it receives), 2 hooks per block otherwise; a scale of
    # exactly 0 blocks, a constant mask is still judged.
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 4) for _ in range(6)]
    x = torch.randn(8, 4)

    def walked(scale):
        h = x
        for i, layer in enumerate(layers):
            h = h + (scale if i == 3 else 0.1) * torch.tanh(layer(h))
        loss = h.square().mean()
        walk = Walk(loss, focus=True)
        loss.backward()
        return walk.finish()

    scaled = walked(0.5)
    assert not scaled.find("mul")
    (zeroed,) = walked(0.0).find("mul")
    assert zeroed.verdict == BLOCKS
    mask = (torch.rand(8, 4) > 0.5).float()
    loss = (torch.tanh(layers[0](x)) * mask).sum()
    walk = Walk(loss, focus=True)
    loss.backward()
    (masked,) = walk.finish().find("mul")
    assert masked.verdict == MASK


class _Fails(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("user backward failed")


def test_collector_state_restored_even_when_the_backward_raises(tmp_path):
    import gc

    w = torch.randn(3, requires_grad=True)
    td.explain_gradients((w * 2).sum())
    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="user backward failed"):
        td.explain_gradients(_Fails.apply(w).sum())
    assert gc.isenabled()
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    with pytest.raises(RuntimeError, match="user backward failed"):
        _Fails.apply(model(torch.randn(8, 4))).mean().backward()  # step 1's walk is cut short
    opt.zero_grad()
    for _ in range(3):
        model(torch.randn(8, 4)).mean().backward()
        opt.step()
        opt.zero_grad()
    assert gc.isenabled()
    report = doc.close()
    assert gc.isenabled() and not report.internal_errors
