"""Writes input.txt, the plain-text corpus minGPT's projects/chargpt/chargpt.py reads (tiny-shakespeare style),
from a synthetic play-like text (seeded). It holds every character of the script's sampling prompt "O God, O God!"."""

import random
import sys

out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else "input.txt"
rng = random.Random(1)
names = ["ROMEO", "JULIET", "MERCUTIO", "NURSE", "TYBALT", "BENVOLIO"]
words = [
    "O",
    "God",
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
while sum(map(len, lines)) < 60_000:
    lines.append(rng.choice(names) + ":")
    for _ in range(rng.randint(1, 4)):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10)))
        lines.append(s[0].upper() + s[1:] + rng.choice([".", ",", "!", "?", ";"]))
    lines.append("")
with open(out, "w") as f:
    f.write("\n".join(lines))
