"""Synthetic parallel corpus for dreamgonfly/transformer-pytorch, prepared by its own script.

Writes `data/example/raw/{src,tgt}-{train,val}.txt` (one tokenized sentence a line, tokens
separated by spaces: the OpenNMT example data's format, at the paths `datasets.py` hard-codes
for its on-the-fly check) and runs the repository's `prepare_datasets.py`, which writes
`data/example/processed/` (the dictionaries and the indexed pairs `train.py` reads).

The "languages": a source sentence is `det adj* noun verb det adj* noun [adv]` over 100
source words; its translation maps each word through a fixed dictionary into 100 target
words and puts adjectives after their noun (as French does), so a model must learn the
lexicon and a local reordering. 2400 training pairs and 200 validation pairs, seeded.

And a `sitecustomize.py` (on `PYTHONPATH=.`): `utils/pad.py` builds the decoder's causal mask
as a uint8 tensor (`np.triu(...).astype('uint8')`), which `masked_fill` took as a boolean
mask in the torch 0.4-1.1 the repository was written for and rejects since torch 1.12
(`masked_fill_ only supports boolean masks`); the shim gives `Tensor.masked_fill` a uint8
mask as the boolean mask it meant. The program's files are unchanged.
"""

import os
import subprocess
import sys

import numpy as np

rng = np.random.default_rng(0)
kinds = {"det": 6, "adj": 30, "noun": 40, "verb": 18, "adv": 6}
src = {k: [f"{k[0]}{i}s" for i in range(n)] for k, n in kinds.items()}
tgt = {k: [f"{k.upper()}{i}" for i in range(n)] for k, n in kinds.items()}


def phrase():
    det, noun = rng.integers(kinds["det"]), rng.integers(kinds["noun"])
    adjs = rng.integers(kinds["adj"], size=int(rng.integers(0, 3)))
    s = [src["det"][det], *(src["adj"][a] for a in adjs), src["noun"][noun]]
    t = [tgt["det"][det], tgt["noun"][noun], *(tgt["adj"][a] for a in adjs)]
    return s, t


def pair():
    s1, t1 = phrase()
    s2, t2 = phrase()
    verb = rng.integers(kinds["verb"])
    s, t = [*s1, src["verb"][verb], *s2], [*t1, tgt["verb"][verb], *t2]
    if rng.random() < 0.3:
        adv = rng.integers(kinds["adv"])
        s.append(src["adv"][adv])
        t.insert(len(t1), tgt["adv"][adv])
    return " ".join(s), " ".join(t)


os.makedirs("data/example/raw", exist_ok=True)
for phase, n in (("train", 2400), ("val", 200), ("test", 200)):
    pairs = [pair() for _ in range(n)]
    with open(f"data/example/raw/src-{phase}.txt", "w") as f:
        f.writelines(s + "\n" for s, _ in pairs)
    if phase != "test":
        with open(f"data/example/raw/tgt-{phase}.txt", "w") as f:
            f.writelines(t + "\n" for _, t in pairs)

with open("sitecustomize.py", "w") as f:
    f.write(
        "# Written by the ecosystem's make_data.py: torch <= 1.1 took a uint8 mask in masked_fill\n"
        "# as a boolean mask (dreamgonfly/transformer-pytorch's causal mask is uint8); torch\n"
        "# 1.12+ rejects it. Same meaning, as a bool mask.\n"
        "import torch\n"
        "\n"
        "_masked_fill = torch.Tensor.masked_fill\n"
        "\n"
        "\n"
        "def masked_fill(self, mask, value):\n"
        "    if isinstance(mask, torch.Tensor) and mask.dtype == torch.uint8:\n"
        "        mask = mask.bool()\n"
        "    return _masked_fill(self, mask, value)\n"
        "\n"
        "\n"
        "torch.Tensor.masked_fill = masked_fill\n"
    )

subprocess.run([sys.executable, "prepare_datasets.py"], check=True, stdout=subprocess.DEVNULL)
