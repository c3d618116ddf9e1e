"""ActivationsProbe: per-unit dead/saturated fractions, bit-identical training, hooks removed."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td
from traindoctor.probes.activations import ActivationsProbe


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)
        with torch.no_grad():
            self.fc2.bias[:6] = -50.0

    def forward(self, x):
        h = self.act(self.fc1(x))
        h = torch.tanh(self.fc2(h) * 100)
        return self.head(F.dropout(h, 0.1))


def _train(watch: bool, out_dir=None, steps: int = 25):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    doc = td.watch(model, opt, out_dir=out_dir, console=False) if watch else None
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 8, generator=g)
        y = torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, doc


def test_training_is_bit_identical_and_hooks_are_removed(tmp_path):
    plain, _ = _train(False)
    watched, doc = _train(True, tmp_path)
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    probe = next(p for p in doc.probes if isinstance(p, ActivationsProbe))
    tl = doc.timeline
    dead = tl.series("activations.dead")
    assert dead, "no sampled step was measured"
    sites = tl.series("activations.sites")[-1][1]
    assert sites["fc1"]["op"] == "relu"
    assert "fc2" not in sites  # tanh(fc2(h) * 100): its input is not fc2's output itself
    assert any(v["op"] == "tanh" for v in sites.values())
    assert tl.series("activations.dead")[-1][1]["fc1"] < 0.5
    sat = tl.series("activations.saturated")[-1][1]
    assert sat  # tanh measured
    assert tl.series("activations.bias_mean")[-1][1]["fc1"] is not None
    # step 25 is not sampled: its hooks are gone, and nothing is left on the model
    assert not probe._switch.active and probe._mode is None
    assert torch._C._len_torch_function_stack() == 0
    doc.close()


class _Flags(torch.Tensor):
    pass


def test_window_fractions_of_sites_with_histories_of_different_lengths():
    """All sites reduced together give each site's own any/all over its own window."""
    from traindoctor.probes.activations import _means, _Site, _step_stats, _window_fractions

    gen = torch.Generator().manual_seed(0)
    for dead in (True, False):
        sites = []
        for units, depth in ((3, 4), (5, 1), (2, 3), (7, 4)):
            site = _Site("relu" if dead else "tanh", "relu" if dead else "tanh", None, "", units)
            for _ in range(depth):
                site.history.append(torch.rand(units, generator=gen) > 0.6)
            m = torch.randn(3, generator=gen)
            site.stats = [(m[0], m[1].abs())] if units != 2 else [(m[0], m[1]), (m[2], m[0])]
            sites.append(site)
        got = _window_fractions(sites, dead=dead)
        # The same, site by site, where one site's flags are a tensor subclass (a DTensor's
        # case: no concatenation, no segment_reduce).
        sub = _Site(sites[0].op, sites[0].kind, None, "", 3)
        sub.history.extend(h.as_subclass(_Flags) for h in sites[0].history)
        assert _window_fractions([sub, *sites[1:]], dead=dead).tolist() == got.tolist()
        for site, g in zip(sites, got.tolist()):
            hist = torch.stack(list(site.history))
            ever = hist.any(dim=0) if dead else hist.all(dim=0)
            want = 1.0 - ever.float().mean() if dead else ever.float().mean()
            assert g == want.item()
        means, stds = _step_stats(sites)
        for site, m, d in zip(sites, means.tolist(), stds.tolist()):
            st = torch.stack([torch.stack([a, b]) for a, b in site.stats]).mean(dim=0)
            assert (m, d) == (st[0].item(), st[1].item())
    biases = [torch.randn(4, generator=gen), torch.randn(9, generator=gen)]
    assert torch.allclose(_means(biases), torch.stack([b.mean() for b in biases]))
    mixed = [torch.randn(4, generator=gen), torch.randn(2, 2, generator=gen)]
    assert torch.allclose(_means(mixed), torch.stack([b.mean() for b in mixed]))
