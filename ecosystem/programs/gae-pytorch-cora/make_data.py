"""Setup for zfjsail/gae-pytorch on the repository's own Cora files (gae/data/ind.cora.*).

The data needs no generating. What this writes is a `sitecustomize.py` (on `PYTHONPATH=.`):
`train.py` passes `pos_weight` as a NumPy float (`adj.sum()` of a SciPy matrix), which torch
0.4 accepted and torch 2 rejects (`argument 'pos_weight' must be Tensor, not numpy.float64`).
The shim turns a number given as `pos_weight` into a 0-d tensor, the value torch 0.4 used; the
program's files are unchanged.
"""

SHIM = """\
# Written by the ecosystem's make_data.py: torch 2 rejects a NumPy float as pos_weight, which
# torch 0.4 (the version zfjsail/gae-pytorch pins) accepted. Same value, as a 0-d tensor.
import functools

import torch
import torch.nn.functional as F

_bce_logits = F.binary_cross_entropy_with_logits


@functools.wraps(_bce_logits)
def binary_cross_entropy_with_logits(input, target, *args, pos_weight=None, **kwargs):
    if pos_weight is not None and not isinstance(pos_weight, torch.Tensor):
        pos_weight = torch.tensor(float(pos_weight), dtype=input.dtype)
    return _bce_logits(input, target, *args, pos_weight=pos_weight, **kwargs)


F.binary_cross_entropy_with_logits = binary_cross_entropy_with_logits
"""

with open("sitecustomize.py", "w") as f:
    f.write(SHIM)
