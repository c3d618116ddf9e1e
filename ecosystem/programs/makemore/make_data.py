"""Writes names.txt (one lowercase name per line), the input file makemore.py reads, from a seeded
syllable grammar, so names have learnable structure like the real names.txt."""

import random
import sys

out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else "names.txt"
rng = random.Random(2)
onsets = ["", "b", "br", "ch", "d", "el", "j", "k", "l", "m", "n", "r", "s", "sh", "t", "v", "z"]
nuclei = ["a", "e", "i", "o", "u", "ai", "ia", "ee", "y"]
codas = ["", "", "n", "l", "r", "s", "h", "nn", "x"]
endings = ["", "a", "ah", "ie", "y", "on", "elle", "ine", "o"]
names = set()
while len(names) < 4000:
    n = "".join(
        rng.choice(onsets) + rng.choice(nuclei) + rng.choice(codas)
        for _ in range(rng.randint(1, 3))
    )
    n = (n + rng.choice(endings))[:15]
    if len(n) >= 2:
        names.add(n)
with open(out, "w") as f:
    f.write("\n".join(sorted(names)) + "\n")
