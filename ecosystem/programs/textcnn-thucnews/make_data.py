"""Synthetic THUCNews headlines for 649453932/Chinese-Text-Classification-Pytorch.

Writes `THUCNews/data/{train,dev,test}.txt` in the repository's format, one headline a line,
`<text>\t<label>`, read character by character (`--word False`, the default). 10 classes (the
repository's own `class.txt`, materialized). Each class has 12 topic characters of its own;
a headline of 18-30 characters draws about a third of them from its class's topic set and
the rest from 400 characters shared by all classes, so the class is learnable from which
characters occur but no single position gives it away. The vocabulary (`vocab.pkl`) is not
written: the program builds it from `train.txt`, as it does when the file is absent.
`THUCNews/saved_dict/` is made (the repository keeps it with an empty placeholder), where the
best model is saved at each validation.

Sizes: the training loop's epochs (20), batch (128) and validation every 100 batches are
hard-coded in `models/TextCNN.py` and `train_eval.py`; 768 training headlines make 6
batches an epoch, 120 steps, validations at steps 0 and 100 (a step costs about 0.4 s
of CPU: the three convolutions span the whole 300-wide embedding).
"""

import os

import numpy as np

rng = np.random.default_rng(0)
CLASSES = 10
common = [chr(0x4E00 + i) for i in range(400)]
topics = [[chr(0x5E00 + 12 * c + i) for i in range(12)] for c in range(CLASSES)]


def headline(label: int) -> str:
    n = int(rng.integers(18, 31))
    topical = rng.random(n) < 0.33
    chars = [
        topics[label][rng.integers(12)] if t else common[rng.integers(len(common))] for t in topical
    ]
    return "".join(chars)


os.makedirs("THUCNews/data", exist_ok=True)
os.makedirs("THUCNews/saved_dict", exist_ok=True)
for name, n in (("train", 768), ("dev", 256), ("test", 256)):
    with open(f"THUCNews/data/{name}.txt", "w", encoding="utf-8") as f:
        for _ in range(n):
            label = int(rng.integers(CLASSES))
            f.write(f"{headline(label)}\t{label}\n")
