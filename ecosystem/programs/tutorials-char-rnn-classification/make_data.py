"""Synthetic data/names/<Language>.txt for pytorch/tutorials' char-RNN name classifier.

One name per line, one file per class. Each of six made-up "languages" has its own syllables
and endings, so the spelling tells the class (with some overlap, as real surnames do).
"""

import argparse
import os
import random

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="data/names")
parser.add_argument("-n", type=int, default=90, help="names per language")
args = parser.parse_args()

LANGS = {
    "Arvish": (["ka", "ra", "vi", "sh", "an"], ["ov", "ova", "in"]),
    "Belune": (["lu", "ne", "be", "ol", "ri"], ["elle", "eau", "et"]),
    "Corran": (["mc", "do", "na", "gh", "ar"], ["an", "agh", "y"]),
    "Dakeni": (["ta", "ke", "mi", "no", "su"], ["ki", "moto", "da"]),
    "Esmari": (["ga", "rc", "lo", "pe", "ez"], ["ez", "es", "o"]),
    "Fennik": (["ha", "ne", "li", "ki", "va"], ["nen", "la", "inen"]),
}
rng = random.Random(0)
os.makedirs(args.out, exist_ok=True)
for lang, (sylls, ends) in LANGS.items():
    names = set()
    while len(names) < args.n:
        body = "".join(rng.choice(sylls) for _ in range(rng.randint(1, 3)))
        names.add((body + rng.choice(ends)).capitalize())
    with open(os.path.join(args.out, f"{lang}.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(sorted(names)) + "\n")
