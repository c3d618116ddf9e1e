"""What a user does with a watched model works as without traindoctor: torch.save of the whole
module (pytorch/examples word_language_model saves it every epoch), pickle, deepcopy, and the
state_dict round trip; the training stays bit-identical. A copy does not carry live hooks."""

from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys

import torch
import torch.nn as nn

import traindoctor as td


def _train(watch: bool, out_dir, save_every: int = 3) -> tuple[list[torch.Tensor], list[int]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    hook_counts = []
    doc = td.watch(model, opt, console=False, out_dir=out_dir) if watch else None
    try:
        for step in range(12):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if step % save_every == 0:
                buf = io.BytesIO()
                torch.save(model, buf)
                buf.seek(0)
                loaded = torch.load(buf, weights_only=False)
                assert torch.equal(loaded(x.clone()).detach(), loaded(x.clone()).detach())
                pickle.loads(pickle.dumps(model))
                torch.save(opt.state_dict(), io.BytesIO())
                twin = copy.deepcopy(model)
                copy.deepcopy(opt)
                model.load_state_dict(model.state_dict())
                # The copy's hooks (if any) are inert: calling it records nothing.
                hook_counts.append(sum(len(m._forward_hooks) for m in twin.modules()))
                twin(x)
    finally:
        if doc is not None:
            doc.close()
    return [p.detach().clone() for p in model.parameters()], hook_counts


def test_save_pickle_deepcopy_of_a_watched_model_work_and_training_is_unchanged(tmp_path):
    plain, _ = _train(watch=False, out_dir=tmp_path)
    watched, _ = _train(watch=True, out_dir=tmp_path)
    for a, b in zip(plain, watched):
        assert torch.equal(a, b)


def test_a_saved_watched_model_loads_without_traindoctor(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with td.watch(model, opt, console=False, out_dir=tmp_path) as _:
        nn.functional.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 2)).backward()
        opt.step()
        path = tmp_path / "model.pt"
        torch.save(model, path)
    # A process where traindoctor cannot be imported loads it and runs it.
    code = (
        "import sys; sys.modules['traindoctor'] = None\n"
        "import torch\n"
        f"m = torch.load({str(path)!r}, weights_only=False)\n"
        "print(m(torch.zeros(1, 4)).shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([1, 2])" in out.stdout
