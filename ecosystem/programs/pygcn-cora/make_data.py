"""Synthetic Cora in pygcn's on-disk format: <out>/cora.content (paper id, binary bag-of-words
features, class name; tab-separated) and <out>/cora.cites (cited id, citing id).

1600 papers (pygcn's splits use nodes 0-1499), 7 classes, 500 words: each class draws its
words mostly from its own vocabulary slice, and citations stay within a class 80% of the time
(seeded).
"""

import argparse
import os

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--nodes", type=int, default=1600)
p.add_argument("--words", type=int, default=500)
p.add_argument("--edges", type=int, default=3200)
a = p.parse_args()
rng = np.random.default_rng(0)
CLASSES = ["Case_Based", "Genetic_Algorithms", "Neural_Networks", "Probabilistic_Methods",
           "Reinforcement_Learning", "Rule_Learning", "Theory"]  # fmt: skip
n, w, k = a.nodes, a.words, len(CLASSES)
ids = rng.choice(np.arange(30, 1_200_000), n, replace=False)
label = rng.integers(0, k, n)
own = np.arange(w) % k  # each word's class
feats = np.zeros((n, w), np.int8)
for i in range(n):
    pick_own = rng.choice(np.flatnonzero(own == label[i]), 12, replace=False)
    pick_any = rng.choice(w, 6, replace=False)
    feats[i, pick_own] = 1
    feats[i, pick_any] = 1
os.makedirs(a.out, exist_ok=True)
with open(os.path.join(a.out, "cora.content"), "w") as f:
    for i in range(n):
        f.write(f"{ids[i]}\t" + "\t".join(map(str, feats[i])) + f"\t{CLASSES[label[i]]}\n")
by_class = [np.flatnonzero(label == c) for c in range(k)]
edges = set()
while len(edges) < a.edges:
    s = int(rng.integers(n))
    t = int(rng.choice(by_class[label[s]])) if rng.random() < 0.8 else int(rng.integers(n))
    if s != t:
        edges.add((s, t))
with open(os.path.join(a.out, "cora.cites"), "w") as f:
    for s, t in sorted(edges):
        f.write(f"{ids[t]}\t{ids[s]}\n")
