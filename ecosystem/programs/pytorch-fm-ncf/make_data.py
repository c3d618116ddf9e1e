"""Synthetic MovieLens-1M ratings for rixwew/pytorch-fm (`--dataset_name movielens1M`).

Writes `ml-1m/ratings.dat` in MovieLens-1M's own format, `UserID::MovieID::Rating::Timestamp`
with 1-based ids; the dataset class keeps the first three columns and calls a rating above 3 a
positive. Ratings come from 4-dimensional user and movie factors plus a movie bias and noise,
so who likes what is learnable (a model that only knows the overall rate scores AUC 0.5).
Also makes `chkpt/`, where the example's early stopper saves the model (`--save_dir`).

And a `sitecustomize.py` (on `PYTHONPATH=.`): the package reads `np.int` and `np.long`
(`astype(np.int)`, `dtype=np.long`), aliases NumPy 1.24 removed; the shim puts them back
under those names (`int` and `numpy.int64`, what they meant). And a stub `lmdb.py`: `main.py`
imports the Avazu and Criteo datasets, which import `lmdb` at the top (used only for those
two data sets; the package is a C extension not installed here). The program is unchanged.
"""

import argparse
import os

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--users", type=int, default=600)
parser.add_argument("--movies", type=int, default=400)
parser.add_argument("--ratings", type=int, default=40000)
args = parser.parse_args()

rng = np.random.default_rng(0)
u = rng.normal(0, 1, (args.users, 4))
m = rng.normal(0, 1, (args.movies, 4))
bias = rng.normal(0, 0.5, args.movies)
pairs = set()
while len(pairs) < args.ratings:
    us = rng.integers(0, args.users, args.ratings)
    ms = rng.integers(0, args.movies, args.ratings)
    pairs.update(zip(us.tolist(), ms.tolist()))
pairs = sorted(pairs)[: args.ratings]
rng.shuffle(pairs)
os.makedirs("ml-1m", exist_ok=True)
os.makedirs("chkpt", exist_ok=True)
with open("ml-1m/ratings.dat", "w") as f:
    for i, (a, b) in enumerate(pairs):
        score = 3.2 + 0.6 * (u[a] @ m[b]) + bias[b] + rng.normal(0, 0.5)
        rating = int(np.clip(np.rint(score), 1, 5))
        f.write(f"{a + 1}::{b + 1}::{rating}::{978300000 + i}\n")

with open("sitecustomize.py", "w") as f:
    f.write(
        "# Written by the ecosystem's make_data.py: NumPy 1.24 removed the aliases np.int and\n"
        "# np.long that rixwew/pytorch-fm reads. Put back under those names.\n"
        "import numpy\n"
        "\n"
        "if not hasattr(numpy, 'int'):\n"
        "    numpy.int = int\n"
        "if not hasattr(numpy, 'long'):\n"
        "    numpy.long = numpy.int64\n"
    )

with open("lmdb.py", "w") as f:
    f.write(
        "# Written by the ecosystem's make_data.py: a stand-in for the lmdb package, which\n"
        "# torchfm's Avazu and Criteo datasets import at the top and MovieLens never uses.\n"
        "def open(*args, **kwargs):\n"
        "    raise RuntimeError('lmdb is not installed (ecosystem stub)')\n"
    )
