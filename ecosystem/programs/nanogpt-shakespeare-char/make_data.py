"""Writes data/shakespeare_char/{train,val}.bin (np.uint16 token ids) and meta.pkl (vocab_size, itos, stoi),
the files nanoGPT's data/shakespeare_char/prepare.py makes, from a synthetic play-like text (seeded)."""

import os
import pickle
import random
import sys

import numpy as np

out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else "data/shakespeare_char"
rng = random.Random(0)
names = ["ROMEO", "JULIET", "MERCUTIO", "NURSE", "TYBALT", "BENVOLIO"]
words = [
    "the",
    "my",
    "thy",
    "thou",
    "art",
    "love",
    "night",
    "day",
    "sweet",
    "fair",
    "death",
    "heaven",
    "sword",
    "house",
    "name",
    "rose",
    "and",
    "of",
    "to",
    "in",
    "is",
    "not",
    "be",
    "that",
    "with",
    "so",
    "but",
    "what",
    "for",
    "shall",
    "will",
    "doth",
    "hath",
    "come",
    "go",
]
lines = []
while sum(map(len, lines)) < 120_000:
    lines.append(rng.choice(names) + ":")
    for _ in range(rng.randint(1, 4)):
        n = rng.randint(4, 10)
        s = " ".join(rng.choice(words) for _ in range(n))
        lines.append(s[0].upper() + s[1:] + rng.choice([".", ",", "!", "?", ";"]))
    lines.append("")
data = "\n".join(lines)
chars = sorted(set(data))
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for i, ch in enumerate(chars)}
ids = np.array([stoi[c] for c in data], dtype=np.uint16)
n = int(0.9 * len(ids))
os.makedirs(out, exist_ok=True)
ids[:n].tofile(os.path.join(out, "train.bin"))
ids[n:].tofile(os.path.join(out, "val.bin"))
with open(os.path.join(out, "meta.pkl"), "wb") as f:
    pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
