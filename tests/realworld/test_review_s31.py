"""Session 31 review (H5): healthy programs that this session's new findings must leave alone.

TD403 followed unwatched copies of a watched model (1fad745); two healthy styles were false
warnings:

- a mean teacher (Tarvainen & Valpola) whose labeled and unlabeled batches alternate: the
  teacher, in train mode on purpose (its BN/dropout noise is the method), runs on every other
  step only, so its runs were not "every step" and read as evaluations;
- an EMA whose BatchNorm statistics are re-estimated by hand (reset_running_stats, forwards
  under no_grad in train mode, as precise-BN does), then `ema.eval()` and evaluated: the
  re-estimation passes read as an evaluation in train mode.

Still reported: an EMA generator sampled every 10 steps in train mode (its BN normalizes the
sample batch by itself). The zero-code checks of TD511/TD521/TD506 on ignore_index=-1, soft
targets, label smoothing, void 255, nll_loss with positional ignore_index, a no_grad metric,
-relu energies, capsule lengths, relu(cos) scaled, log(softmax + eps) into kl_div and
unbatched calls were silent already (no test: each costs a subprocess).
"""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import traindoctor as td


def _net():
    return nn.Sequential(
        nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3)
    )


def _batch(n=32):
    x = torch.randn(n, 10)
    return x, x[:, :3].argmax(1)


def _td403(doc):
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    return [f for f in report.findings if f.code == "TD403"]


def alternating_mean_teacher(tmp_path):
    torch.manual_seed(0)
    model = _net()
    teacher = copy.deepcopy(model)  # left in train mode on purpose
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    step = 0
    for _ in range(3):
        model.train()
        for _ in range(12):
            x, y = _batch()
            if step % 2 == 0:  # a labeled batch
                loss = F.cross_entropy(model(x), y)
            else:  # an unlabeled batch: consistency with the teacher
                with torch.no_grad():
                    t = F.softmax(teacher(x + 0.1 * torch.randn_like(x)), 1)
                loss = F.mse_loss(F.softmax(model(x), 1), t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            with torch.no_grad():
                for pt, ps in zip(teacher.parameters(), model.parameters()):
                    pt.mul_(0.95).add_(ps, alpha=0.05)
        model.eval()
        with torch.no_grad():
            model(_batch()[0])
            model(_batch()[0])
    return doc


def test_mean_teacher_on_alternate_steps_is_silent(tmp_path):
    assert not _td403(alternating_mean_teacher(tmp_path))


def ema_with_bn_reestimated(tmp_path, then_eval=True):
    torch.manual_seed(1)
    model = _net()
    ema = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), 0.05)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    xs = [_batch() for _ in range(8)]
    for _ in range(3):
        model.train()
        for x, y in xs:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.mul_(0.9).add_(pm, alpha=0.1)
        model.eval()
        with torch.no_grad():
            model(xs[0][0])
            model(xs[1][0])
        for m in ema.modules():  # re-estimate the EMA's BN statistics (precise BN)
            if isinstance(m, nn.BatchNorm1d):
                m.reset_running_stats()
                m.momentum = None
        with torch.no_grad():
            for x, _ in xs:
                ema(x)
        if then_eval:
            ema.eval()
        with torch.no_grad():
            ema(xs[0][0])
            ema(xs[1][0])
        if then_eval:
            ema.train()
    return doc


def test_ema_bn_reestimated_then_eval_is_silent(tmp_path):
    assert not _td403(ema_with_bn_reestimated(tmp_path))


def test_ema_bn_reestimated_then_evaluated_in_train_mode_still_fires(tmp_path):
    found = _td403(ema_with_bn_reestimated(tmp_path, then_eval=False))
    assert len(found) == 1 and found[0].evidence["copy_of"] == "<model>"


# -- TD508: an expand keeps the class dim in place ---------------------------------------------
def test_image_scores_expanded_to_a_map_are_not_a_split_class_dim(tmp_path):
    """Logits (N, C) viewed as (N, C, 1, 1) and expanded to (N, C, H, W) against (N, H, W)
    targets: the classes stay along dim 1. The layout probe lost the dim at the expand (its
    row-major reshape rule does not hold there) and TD508 said a view split them: an error."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 5))
    w = torch.randn(12, 5)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    doc = td.watch(model, opt, out_dir=tmp_path, console=False)
    for _ in range(12):
        x = torch.randn(64, 12)
        y = (x @ w).argmax(1)
        logits = model(x).view(64, 5, 1, 1).expand(64, 5, 4, 4)
        loss = F.cross_entropy(logits, y.view(64, 1, 1).expand(64, 4, 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = doc.close()
    assert not report.internal_errors, report.internal_errors
    assert not [f for f in report.findings if f.code == "TD508"]
