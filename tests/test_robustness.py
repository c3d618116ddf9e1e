"""Robustness: healthy training loops of shapes no rule was written for must get no error and
no warning, in both attach modes (`td.watch()` and zero-code), and a few of the same shapes with
a planted bug must still get the right rule at the right params.

Each loop builds its model and optimizer itself, calls `watch(model, opt, scaler)` when given
one (watch mode; zero-code mode passes None and runs the unmodified loop under `attached()`),
and trains on tiny synthetic data that the model can learn in ~50 steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import traindoctor as td
from traindoctor.doctor import Doctor
from traindoctor.findings import Severity
from traindoctor.integrations.autopatch import attached

torch.set_num_threads(1)

Watch = Callable[..., Any] | None


def _log(doc: Any, **kw: Any) -> None:
    if doc is not None:
        doc.log(**kw)


def _cycle(items: list[Any], steps: int) -> list[Any]:
    return [items[i % len(items)] for i in range(steps)]


# -- data -------------------------------------------------------------------------------------
def _images(n_batches: int = 4, batch: int = 16, seed: int = 0):
    """8x8 one-channel images; the label says whether the top half is brighter."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, 1, 8, 8, generator=g)
        y = (x[:, :, :4].mean((1, 2, 3)) > x[:, :, 4:].mean((1, 2, 3))).long()
        out.append((x, y))
    return out


def _tokens(n_batches: int = 4, batch: int = 8, length: int = 6, vocab: int = 12, seed: int = 0):
    """Sequences of token ids; the target at each position is the previous token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randint(1, vocab, (batch, length), generator=g)
        y = torch.cat([torch.zeros(batch, 1, dtype=torch.long), x[:, :-1]], dim=1)
        out.append((x, y))
    return out


def _sequences(n_batches: int = 4, batch: int = 16, length: int = 7, seed: int = 0):
    """Float sequences; the target is the mean of the first feature over time."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, length, 3, generator=g)
        out.append((x, x[:, :, :1].mean(1)))
    return out


def _tabular(n_batches: int = 4, batch: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 3, generator=g)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, 6, generator=g)
        out.append((x, (x @ w).argmax(1)))
    return out


# -- models -----------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(8 * 2 * 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x).flatten(1)))


class TinyTransformer(nn.Module):
    """Two encoder layers; the output projection shares its weight with the embedding."""

    def __init__(self, vocab: int = 12, d_model: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(1, 6, d_model) * 0.1)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.head.weight = self.embed.weight  # weight tying: one Parameter, two modules
        # Tied embeddings are initialized small (GPT-2: std 0.02): N(0, 1) rows make the
        # logits' std ~4 and the loss at init ~4x ln(vocab) (TD209 poor-initialization).
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        h = self.encoder(self.embed(x) + self.pos[:, : x.shape[1]], mask=mask, is_causal=True)
        return self.head(self.norm(h))


class SeqRegressor(nn.Module):
    def __init__(self, cell: str) -> None:
        super().__init__()
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(3, 16, num_layers=2, batch_first=True)
        self.out = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwoHeads(nn.Module):
    """A trunk, a class head and a regression head; forward returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.cls = nn.Linear(16, 3)
        self.reg = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {"logits": self.cls(h), "value": self.reg(h).squeeze(-1), "hidden": h}


class FrozenEmbedBag(nn.Module):
    """A pretrained-looking embedding, frozen, under a trainable classifier."""

    def __init__(self, vocab: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.embed.requires_grad_(False)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, vocab))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(x))


def _two_groups(model: nn.Module, decay: float = 0.01) -> list[dict[str, Any]]:
    decay_p = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay_p, "weight_decay": decay}, {"params": other, "weight_decay": 0.0}]


# -- healthy loops ----------------------------------------------------------------------------
def cnn_onecycle(steps: int, watch: Watch, zero_grad: bool = True) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    doc = watch(model, opt) if watch else None
    for x, y in _cycle(_images(), steps):
        if zero_grad:
            opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        _log(doc, loss=loss)
    model.eval()
    with torch.no_grad():
        model(_images(1, seed=9)[0][0])


def transformer_tied(steps: int, watch: Watch, head_in_optimizer: bool = True) -> None:
    torch.manual_seed(0)
    model = TinyTransformer()
    if head_in_optimizer:
        groups = _two_groups(model)
    else:  # BUG: the head's params are filtered out by name (the tied weight is "embed.weight")
        kept = [p for n, p in model.named_parameters() if not n.startswith("head.")]
        groups = [{"params": kept}]
    opt = torch.optim.AdamW(groups, lr=1e-2)
    doc = watch(model, opt) if watch else None
    for x, y in _cycle(_tokens(), steps):
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        _log(doc, loss=loss.item())


def rnn_clipped(cell: str) -> Callable[[int, Watch], None]:
    def loop(steps: int, watch: Watch) -> None:
        torch.manual_seed(0)
        model = SeqRegressor(cell)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        doc = watch(model, opt) if watch else None
        for x, y in _cycle(_sequences(), steps):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            opt.step()
            _log(doc, loss=loss)

    return loop


def bf16_autocast_scaler(steps: int, watch: Watch) -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    doc = watch(model, opt, scaler) if watch else None
    for x, y in _cycle(_tabular(), steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        _log(doc, loss=loss)


def accumulate_3(steps: int, watch: Watch) -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    doc = watch(model, opt) if watch else None
    data = _cycle(_tabular(n_batches=6, batch=8), steps * 3)
    for i, (x, y) in enumerate(data):
        loss = F.cross_entropy(model(x), y) / 3
        loss.backward()
        _log(doc, loss=loss * 3)
        if (i + 1) % 3 == 0:
            opt.step()
            opt.zero_grad()


def accumulate_masked(steps: int, watch: Watch) -> None:
    """Token-level loss summed and divided by how many tokens each micro-batch keeps."""
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    doc = watch(model, opt) if watch else None
    g = torch.Generator().manual_seed(3)
    data = _cycle(_tabular(n_batches=6, batch=8), steps * 3)
    masks = [torch.rand(8, generator=g) > 0.4 for _ in range(len(data))]
    for m in masks:
        m[0] = True
    for i, ((x, y), mask) in enumerate(zip(data, masks)):
        per_item = F.cross_entropy(model(x), y, reduction="none")
        loss = (per_item * mask).sum() / mask.sum()
        loss.backward()
        _log(doc, loss=loss)
        if (i + 1) % 3 == 0:
            opt.step()
            opt.zero_grad()


def frozen_embedding(steps: int, watch: Watch) -> None:
    torch.manual_seed(0)
    model = FrozenEmbedBag()
    opt = torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=1e-2)
    doc = watch(model, opt) if watch else None
    for x, _ in _cycle(_tokens(), steps):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1))
        loss.backward()
        opt.step()
        _log(doc, loss=loss)


def two_backwards_retain(steps: int, watch: Watch) -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    doc = watch(model, opt) if watch else None
    for x, y in _cycle(_tabular(), steps):
        opt.zero_grad()
        out = model(x)
        loss1 = F.cross_entropy(out["logits"], y)
        loss2 = F.mse_loss(out["value"], x[:, 0])
        loss1.backward(retain_graph=True)
        loss2.backward()
        opt.step()
        _log(doc, loss=loss1 + loss2)


def autograd_backward_list(steps: int, watch: Watch) -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    doc = watch(model, opt) if watch else None
    for x, y in _cycle(_tabular(), steps):
        opt.zero_grad()
        out = model(x)
        l1 = F.cross_entropy(out["logits"], y)
        l2 = F.mse_loss(out["value"], x[:, 0])
        torch.autograd.backward([l1, l2])
        opt.step()
        _log(doc, loss=(l1 + l2).detach())


def dict_output(steps: int, watch: Watch) -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    opt = torch.optim.AdamW(_two_groups(model), lr=1e-2)
    if watch:
        watch(model, opt)  # no doc.log(): the loss is read from the backward root
    for x, y in _cycle(_tabular(), steps):
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out["logits"], y) + 0.5 * F.mse_loss(out["value"], x[:, 0])
        loss.backward()
        opt.step()


def log_item_after_step(steps: int, watch: Watch) -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, opt) if watch else None
    for x, y in _cycle(_tabular(), steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        _log(doc, loss=loss.item())


def log_detached_before_backward(steps: int, watch: Watch) -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, opt) if watch else None
    for x, y in _cycle(_tabular(), steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        _log(doc, loss=loss.detach())
        loss.backward()
        opt.step()


def log_item_before_backward(steps: int, watch: Watch) -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    doc = watch(model, opt) if watch else None
    for x, y in _cycle(_tabular(), steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        _log(doc, loss=loss.item())
        loss.backward()
        opt.step()


def sparse_embedding(steps: int, watch: Watch, sparse_adam: bool = False) -> None:
    """nn.Embedding(sparse=True): its .grad is a sparse COO tensor."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"embed": nn.Embedding(12, 8, sparse=True), "head": nn.Linear(8, 12)})
    if sparse_adam:
        opts = [
            torch.optim.SparseAdam(model["embed"].parameters(), lr=1e-2),
            torch.optim.Adam(model["head"].parameters(), lr=1e-2),
        ]
    else:
        opts = [torch.optim.SGD(model.parameters(), lr=0.2)]
    if watch:
        watch(model, opts if len(opts) > 1 else opts[0])
    for x, _ in _cycle(_tokens(), steps):
        for opt in opts:
            opt.zero_grad()
        logits = model["head"](model["embed"](x))
        F.cross_entropy(logits.reshape(-1, 12), x.reshape(-1)).backward()
        for opt in opts:
            opt.step()


def progressive_unfreeze(steps: int, watch: Watch, add_group: bool = True) -> None:
    """The first layer is frozen, then unfrozen after the structural steps and added to the
    optimizer with add_param_group()."""
    torch.manual_seed(0)
    model = MLP()
    model.net[0].requires_grad_(False)
    opt = torch.optim.Adam(model.net[2].parameters(), lr=1e-2)
    if watch:
        watch(model, opt)
    for i, (x, y) in enumerate(_cycle(_tabular(), steps)):
        if i == 10:
            model.net[0].requires_grad_(True)
            if add_group:
                opt.add_param_group({"params": list(model.net[0].parameters()), "lr": 3e-3})
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def last_batch_smaller(steps: int, watch: Watch) -> None:
    """A summed loss divided by the batch length, a Python int; the last batch of each epoch
    has 4 samples instead of 16."""
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if watch:
        watch(model, opt)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(100, 6, generator=g)
    ys = (xs @ torch.randn(6, 3, generator=g)).argmax(1)
    batches = [(xs[i : i + 16], ys[i : i + 16]) for i in range(0, 100, 16)]
    for x, y in _cycle(batches, steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y, reduction="sum") / len(y)
        loss.backward()
        opt.step()


def masked_int_count(steps: int, watch: Watch) -> None:
    """Divided by int(mask.sum()): a Python number that takes two values (15 and 16)."""
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if watch:
        watch(model, opt)
    for i, (x, y) in enumerate(_cycle(_tabular(), steps)):
        mask = torch.ones(16, dtype=torch.bool)
        mask[: i % 2] = False
        opt.zero_grad()
        per_item = F.cross_entropy(model(x), y, reduction="none")
        loss = (per_item * mask).sum() / int(mask.sum())
        loss.backward()
        opt.step()


def checkpointed(steps: int, watch: Watch) -> None:
    from torch.utils.checkpoint import checkpoint

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
            self.out = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(checkpoint(self.block, x, use_reentrant=False))

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if watch:
        watch(model, opt)
    for x, y in _cycle(_tabular(), steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def two_optimizers_one_model(steps: int, watch: Watch) -> None:
    torch.manual_seed(0)
    model = MLP()
    o1 = torch.optim.SGD([p for p in model.parameters() if p.ndim >= 2], lr=0.1, momentum=0.9)
    o2 = torch.optim.Adam([p for p in model.parameters() if p.ndim < 2], lr=1e-2)
    if watch:
        watch(model, [o1, o2])
    for x, y in _cycle(_tabular(), steps):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        o1.step()
        o2.step()


def scaler_skips_first_steps(steps: int, watch: Watch) -> None:
    """A huge initial scale overflows: the scaler skips optimizer.step() until it backs off."""
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**126)
    if watch:
        watch(model, opt, scaler)
    for x, y in _cycle(_tabular(), steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def branch_every_other_step(steps: int, watch: Watch) -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if watch:
        watch(model, opt)
    for i, (x, y) in enumerate(_cycle(_tabular(), steps)):
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out["logits"], y)
        if i % 2:
            loss = loss + F.mse_loss(out["value"], x[:, 0])
        loss.backward()
        opt.step()


OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda ps, **kw: torch.optim.SGD(ps, lr=0.1, momentum=0.5, **kw),
    "adam": lambda ps, **kw: torch.optim.Adam(ps, lr=1e-2, **kw),
    "adamw": lambda ps, **kw: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05, **kw),
    "rmsprop": lambda ps, **kw: torch.optim.RMSprop(ps, lr=3e-3, **kw),
    "adagrad": lambda ps, **kw: torch.optim.Adagrad(ps, lr=0.1, **kw),
}


def with_optimizer(kind: str, foreach: bool) -> Callable[[int, Watch], None]:
    def loop(steps: int, watch: Watch) -> None:
        torch.manual_seed(0)
        model = MLP()
        opt = OPTIMIZERS[kind](model.parameters(), foreach=foreach)
        doc = watch(model, opt) if watch else None
        for x, y in _cycle(_tabular(), steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            _log(doc, loss=loss)

    return loop


HEALTHY: dict[str, tuple[Callable[[int, Watch], None], int]] = {
    "cnn-batchnorm-onecycle": (cnn_onecycle, 50),
    "transformer-tied-two-groups": (transformer_tied, 50),
    "lstm-clip-grad-norm": (rnn_clipped("lstm"), 50),
    "gru-clip-grad-norm": (rnn_clipped("gru"), 50),
    "bf16-autocast-grad-scaler": (bf16_autocast_scaler, 50),
    "accumulate-3-divide-by-3": (accumulate_3, 50),
    "accumulate-3-divide-by-mask-count": (accumulate_masked, 50),
    "frozen-embedding-filtered-optimizer": (frozen_embedding, 50),
    "two-backwards-retain-graph": (two_backwards_retain, 50),
    "autograd-backward-list": (autograd_backward_list, 50),
    "dict-output": (dict_output, 50),
    "log-item-after-step": (log_item_after_step, 50),
    "log-detached-before-backward": (log_detached_before_backward, 50),
    "log-item-before-backward": (log_item_before_backward, 50),
    "sparse-embedding-sgd": (sparse_embedding, 50),
    "sparse-embedding-sparse-adam": (lambda s, w: sparse_embedding(s, w, sparse_adam=True), 50),
    "progressive-unfreeze-add-param-group": (progressive_unfreeze, 50),
    "sum-over-len-last-batch-smaller": (last_batch_smaller, 50),
    "sum-over-int-mask-count": (masked_int_count, 50),
    "activation-checkpointing": (checkpointed, 50),
    "two-optimizers-one-model": (two_optimizers_one_model, 50),
    "grad-scaler-skips-first-steps": (scaler_skips_first_steps, 50),
    "loss-branch-every-other-step": (branch_every_other_step, 50),
    **{
        f"{kind}-foreach-{foreach}": (with_optimizer(kind, foreach), 50)
        for kind in OPTIMIZERS
        for foreach in (False, True)
    },
}


# -- harness ----------------------------------------------------------------------------------
def _run(loop: Callable[[int, Watch], None], steps: int, mode: str, tmp_path):
    if mode == "watch":
        docs: list[td.Doctor] = []

        def watch(model, opt, scaler=None):
            docs.append(td.watch(model, opt, scaler, out_dir=tmp_path, console=False))
            return docs[-1]

        loop(steps, watch)
        assert len(docs) == 1
        report = docs[0].close()
    else:
        doctor = Doctor(out_dir=tmp_path, mode="zero-code", console=False)
        with attached(doctor):
            loop(steps, None)
        report = doctor.close()
    assert not report.internal_errors, report.internal_errors
    return report


def _flagged(report) -> list[str]:
    return [
        f"{f.code} {f.severity.value} step={f.step}: {f.title} {f.where}"
        for f in report.findings
        if f.severity in (Severity.ERROR, Severity.WARNING)
    ]


MODES = ("watch", "zero-code")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_loop_gets_no_error_or_warning(name, mode, tmp_path):
    loop, steps = HEALTHY[name]
    report = _run(loop, steps, mode, tmp_path)
    assert report.steps == steps
    assert _flagged(report) == []


# -- buggy twins ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_tied_transformer_with_head_left_out_of_optimizer_is_td103(mode, tmp_path):
    report = _run(lambda s, w: transformer_tied(s, w, head_in_optimizer=False), 20, mode, tmp_path)
    f = report.get("TD103")
    assert f is not None, _flagged(report)
    assert f.step is not None and f.step <= 3
    # The tied weight is held (as embed.weight); only the head's own bias is missing.
    assert set(f.where.params) == {"head.bias"}


@pytest.mark.parametrize("mode", MODES)
def test_cnn_without_zero_grad_is_td106(mode, tmp_path):
    report = _run(lambda s, w: cnn_onecycle(s, w, zero_grad=False), 30, mode, tmp_path)
    f = report.get("TD106")
    assert f is not None, _flagged(report)
    names = {n for n, _ in SmallCNN().named_parameters()}
    assert set(f.where.params) == names


@pytest.mark.parametrize("mode", MODES)
def test_unfrozen_layer_never_added_to_optimizer_is_td103(mode, tmp_path):
    # The twin of progressive-unfreeze: requires_grad_(True) without add_param_group().
    report = _run(lambda s, w: progressive_unfreeze(s, w, add_group=False), 30, mode, tmp_path)
    f = report.get("TD103")
    assert f is not None, _flagged(report)
    assert set(f.where.params) == {"net.0.weight", "net.0.bias"}
