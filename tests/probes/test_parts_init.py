"""Parts and init probes: part gradient norms against brute force, the cross-entropy wrapper,
final layers, and bit-identical training with both on."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests._loop import assert_bit_identical, params_of, watch
from traindoctor.probes.init import final_params


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.a = nn.Linear(16, 3)
        self.b = nn.Linear(16, 1)

    def forward(self, x):
        f = self.body(x)
        return self.a(f), self.b(f)


def _data(n):
    g = torch.Generator().manual_seed(3)
    return [
        (torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g), torch.randn(8, 1))
        for _ in range(n)
    ]


def _train(model, steps, doc=None, oracle=None, crit=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if doc is not None:
        doc = doc(model, opt)
    for step, (x, y, t) in enumerate(_data(steps), 1):
        logits, reg = model(x)
        ce = (crit or nn.functional.cross_entropy)(logits, y)
        mse = 10.0 * nn.functional.mse_loss(reg, t)
        if oracle is not None:
            shared = list(model.body.parameters())
            norms = {}
            for name, part in (("ce", ce), ("mse", mse)):
                gs = torch.autograd.grad(part, shared, retain_graph=True)
                norms[name] = math.sqrt(sum(float(g.pow(2).sum()) for g in gs))
            oracle[step] = norms
        if doc is not None:
            doc.log(loss=ce + mse, parts={"ce": ce, "mse": mse})
        opt.zero_grad(set_to_none=True)
        (ce + mse).backward()
        opt.step()
    return doc


def test_part_gradient_norms_equal_brute_force_on_shared_params(tmp_path):
    oracle: dict = {}
    doc = _train(TwoHeads(), 12, doc=lambda m, o: watch(m, o, tmp_path), oracle=oracle)
    doc.close()
    measured = dict(doc.timeline.series("loss.parts_grad"))
    assert {1, 2, 3} <= set(measured)
    for step, norms in measured.items():
        assert norms["ce"] == pytest.approx(oracle[step]["ce"], rel=1e-5)
        assert norms["mse"] == pytest.approx(oracle[step]["mse"], rel=1e-5)
    assert doc.timeline.facts["parts_shared_params"] == 2  # body.0.weight, body.0.bias


def test_training_is_bit_identical_with_parts_and_init_probes(tmp_path):
    plain = TwoHeads()
    _train(plain, 15)
    watched = TwoHeads()
    doc = _train(watched, 15, doc=lambda m, o: watch(m, o, tmp_path), crit=nn.CrossEntropyLoss())
    doc.close()
    assert not doc.report.internal_errors
    assert_bit_identical(params_of(watched), params_of(plain))


def test_cross_entropy_wrapper_records_classes_and_is_removed(tmp_path):
    original = nn.functional.cross_entropy
    model = TwoHeads()
    doc = _train(model, 5, doc=lambda m, o: watch(m, o, tmp_path), crit=nn.CrossEntropyLoss())
    # removed after the structural steps, before close()
    assert nn.functional.cross_entropy is original
    doc.close()
    classes = dict(doc.timeline.series("init.ce_classes"))
    values = dict(doc.timeline.series("init.ce_loss"))
    assert sorted(classes) == [1, 2, 3]
    assert all(set(c.values()) == {3} for c in classes.values()), classes
    first = next(iter(values[1].values()))
    assert abs(first - math.log(3)) < 0.5
    assert "test_parts_init.py:" in doc.timeline.events("cross_entropy_call")[0]["source"]


def test_wrapper_returns_torchs_result_and_is_removed_on_close(tmp_path):
    original = nn.functional.cross_entropy
    model = TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, opt, tmp_path)
    assert nn.functional.cross_entropy is not original
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    assert torch.equal(nn.functional.cross_entropy(x, y), original(x, y))
    assert torch.equal(
        nn.functional.cross_entropy(x, y, reduction="none"), original(x, y, reduction="none")
    )
    doc.close()
    assert nn.functional.cross_entropy is original


def test_final_params_are_the_ops_closest_to_the_loss():
    model = TwoHeads()
    names = {id(p): n for n, p in model.named_parameters()}
    x = torch.randn(4, 6)
    logits, reg = model(x)
    loss = logits.logsumexp(1).mean() + reg.pow(2).mean()
    assert sorted(final_params(loss, names)) == ["a.bias", "a.weight", "b.bias", "b.weight"]


def test_gain_of_the_final_layer_is_measured(tmp_path):
    model = TwoHeads()
    doc = _train(model, 4, doc=lambda m, o: watch(m, o, tmp_path))
    doc.close()
    assert doc.timeline.events("final_layers")[0]["modules"] == ["a", "b"]
    ins = dict(doc.timeline.series("init.in_std"))[1]
    outs = dict(doc.timeline.series("init.out_std"))[1]
    x = _data(1)[0][0]
    torch.manual_seed(0)
    fresh = TwoHeads()
    with torch.no_grad():
        f = fresh.body(x)
        assert ins["a"] == pytest.approx(f.std().item(), rel=1e-5)
        assert outs["a"] == pytest.approx(fresh.a(f).std().item(), rel=1e-5)


def test_parts_logged_after_backward_are_skipped_once(tmp_path):
    model = TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    doc = watch(model, opt, tmp_path)
    for x, y, t in _data(4):
        logits, reg = model(x)
        ce, mse = nn.functional.cross_entropy(logits, y), nn.functional.mse_loss(reg, t)
        opt.zero_grad()
        (ce + mse).backward()
        opt.step()
        doc.log(loss=ce + mse, parts={"ce": ce, "mse": mse})
    doc.close()
    assert not doc.report.internal_errors
    assert len(doc.timeline.events("parts_graph_unavailable")) == 1
    assert not doc.timeline.series("loss.parts_grad")


def _two_part_run(watch: bool, tmp_path, checkpointed: bool, module_hook: bool):
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    import traindoctor as td

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = torch.nn.Sequential(
                torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU()
            )
            self.a, self.b = torch.nn.Linear(16, 1), torch.nn.Linear(16, 1)

        def forward(self, x):
            h = checkpoint(self.block, x, use_reentrant=False) if checkpointed else self.block(x)
            return self.a(h), self.b(h)

    torch.manual_seed(0)
    model = Net()
    calls = {"module_backward": 0}
    if module_hook:
        model.block.register_full_backward_hook(
            lambda *_: calls.__setitem__("module_backward", calls["module_backward"] + 1)
        )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False) if watch else None
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        x, y = torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)
        opt.zero_grad()
        pa, pb = model(x)
        la, lb = F.mse_loss(pa, y), F.l1_loss(pb, y)
        if doc:
            doc.log(loss=la + lb, parts={"a": la, "b": lb})
        (la + lb).backward()
        opt.step()
    if doc:
        doc.close()
    return calls, {k: v.clone() for k, v in model.state_dict().items()}, doc


@pytest.mark.parametrize(
    ("checkpointed", "module_hook"), [(True, False), (False, True)], ids=["checkpoint", "hook"]
)
def test_part_gradients_never_change_state_or_call_module_hooks(
    tmp_path, checkpointed, module_hook
):
    plain_calls, plain_state, _ = _two_part_run(False, tmp_path, checkpointed, module_hook)
    calls, state, doc = _two_part_run(True, tmp_path, checkpointed, module_hook)
    assert calls == plain_calls
    for k in plain_state:
        assert torch.equal(plain_state[k], state[k]), k
    assert doc.timeline.events("parts_not_measured")
