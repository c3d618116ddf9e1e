"""Synthetic citation graph in Cora's on-disk format for pytorch/examples gat (./cora).

cora.content: `<paper id> <0/1 word attributes...> <class label>` per line; cora.cites:
`<cited id> <citing id>` per line. Each of 7 classes has its own likely words and most
citations stay inside a class (as in Cora), so a graph network can learn the labels. The
program splits nodes 1200 test / 400 val / the rest train: 1700 nodes leave 100 to train on.
"""

import argparse
import os

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="cora")
parser.add_argument("--nodes", type=int, default=1700)
parser.add_argument("--words", type=int, default=300)
parser.add_argument("--edges", type=int, default=5000)
args = parser.parse_args()

rng = np.random.default_rng(0)
classes = [
    "Case_Based",
    "Genetic_Algorithms",
    "Neural_Networks",
    "Probabilistic_Methods",
    "Reinforcement_Learning",
    "Rule_Learning",
    "Theory",
]
labels = rng.integers(0, len(classes), args.nodes)
ids = rng.choice(np.arange(1000, 1_200_000), args.nodes, replace=False)
topic = rng.uniform(0.0, 1.0, (len(classes), args.words)) ** 8 * 0.2  # a few likely words per class
words = (rng.uniform(size=(args.nodes, args.words)) < topic[labels] + 0.005).astype(int)
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, "cora.content"), "w") as f:
    for i in range(args.nodes):
        f.write("\t".join([str(ids[i]), *map(str, words[i]), classes[labels[i]]]) + "\n")
by_class = [np.flatnonzero(labels == c) for c in range(len(classes))]
with open(os.path.join(args.out, "cora.cites"), "w") as f:
    for _ in range(args.edges):
        a = rng.integers(args.nodes)
        same = rng.uniform() < 0.8
        b = rng.choice(by_class[labels[a]]) if same else rng.integers(args.nodes)
        f.write(f"{ids[a]}\t{ids[b]}\n")
