"""Synthetic MNIST in torchvision's raw IDX layout (pytorch-gan-gan's generator), and a
sitecustomize.py for the program's PYTHONPATH.

The program builds its LinearLR and CosineAnnealingLR with `verbose=True`, a keyword torch
removed (TypeError in the vision venv's torch 2.15): the shim accepts and drops it, the
program's own code is unchanged.
"""

import runpy
import sys
from pathlib import Path

SHIM = """# ecosystem shim (ours): torch removed the LR schedulers' `verbose` keyword this program passes
import torch.optim.lr_scheduler as _s

for _name in ("LinearLR", "CosineAnnealingLR"):
    _cls = getattr(_s, _name)

    def _init(self, *args, verbose=None, _orig=_cls.__init__, **kwargs):
        _orig(self, *args, **kwargs)

    _cls.__init__ = _init
"""

Path("sitecustomize.py").write_text(SHIM)
gen = Path(__file__).resolve().parent.parent / "pytorch-gan-gan" / "make_data.py"
sys.argv = [str(gen), *sys.argv[1:]]
runpy.run_path(str(gen), run_name="__main__")
