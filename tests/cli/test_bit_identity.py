"""`traindoctor run` never changes the training: same seed, CPU, bit-identical parameters."""

from __future__ import annotations

import torch

from .conftest import python, run_all, td, write

TRAIN = """
import sys
import torch

torch.manual_seed(1234)
model = torch.nn.Sequential(
    torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 3)
)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
x, y = torch.randn(128, 8), torch.randint(0, 3, (128,))
for step in range(50):
    i = torch.randint(0, 128, (16,))
    loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
state = {k: v.clone() for k, v in model.state_dict().items()}
state.update({f"opt.{k}": v for k, v in opt.state_dict()["state"][0].items()})
torch.save(state, sys.argv[1])
"""


def test_parameters_are_bit_identical_with_and_without_traindoctor(tmp_path):
    write(tmp_path, "train.py", TRAIN)
    res = run_all(
        {
            "plain": lambda: python(tmp_path, "train.py", "out_plain.pt"),
            "td": lambda: td(tmp_path, "run", "train.py", "out_td.pt"),
        }
    )
    assert res["plain"].rc == 0, res["plain"]
    assert res["td"].rc == 0, res["td"]
    plain = torch.load(tmp_path / "out_plain.pt", weights_only=True)
    watched = torch.load(tmp_path / "out_td.pt", weights_only=True)
    assert plain.keys() == watched.keys()
    for key in plain:
        assert plain[key].dtype == watched[key].dtype, key
        assert torch.equal(plain[key], watched[key]), key
    # And it did watch: the run directory holds 50 steps.
    assert res["td"].findings()["steps"] == 50
