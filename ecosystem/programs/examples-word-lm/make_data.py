"""Synthetic WikiText-2-like corpus for pytorch/examples word_language_model.

Writes <out>/{train,valid,test}.txt: whitespace-tokenized lines, as data.Corpus reads them.
The text comes from a seeded sparse Markov chain over a 300-word vocabulary (each word has a
few likely successors), so a language model can lower its loss well below log(vocab).
"""

import argparse
import os
import random

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="data/wikitext-2")
parser.add_argument("--train-tokens", type=int, default=60000)
parser.add_argument("--eval-tokens", type=int, default=6000)
args = parser.parse_args()

rng = random.Random(1234)
vocab = [f"w{i:03d}" for i in range(300)]
succ = {w: rng.sample(vocab, 4) for w in vocab}
weights = [0.55, 0.25, 0.15, 0.05]


def text(n_tokens):
    lines, w, n = [], rng.choice(vocab), 0
    while n < n_tokens:
        line = []
        for _ in range(rng.randint(8, 24)):
            line.append(w)
            w = rng.choices(succ[w], weights)[0]
        lines.append(" " + " ".join(line) + " \n")
        n += len(line) + 1
    return "".join(lines)


os.makedirs(args.out, exist_ok=True)
for name, n in (
    ("train", args.train_tokens),
    ("valid", args.eval_tokens),
    ("test", args.eval_tokens),
):
    with open(os.path.join(args.out, name + ".txt"), "w", encoding="utf8") as f:
        f.write(text(n))
