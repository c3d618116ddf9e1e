"""Writes data/eng-fra.txt ("English<TAB>French" per line, the file the PyTorch seq2seq translation tutorial reads)
from a seeded toy grammar: English sentences start with the tutorial's eng_prefixes and stay under its MAX_LENGTH,
French is a consistent word-level translation, and every word of the tutorial's four closing demo sentences
(evaluateAndShowAttention) is in the French vocabulary. 32 pairs = one batch (of the hard-coded 128) per epoch, so the 80 epochs make 80 optimizer steps."""

import os
import random
import sys

out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else "data/eng-fra.txt"
rng = random.Random(3)
subjects = [
    ("i am", "je suis", False),
    ("i m", "je suis", False),
    ("he is", "il est", True),
    ("she is", "elle est", True),
    ("we are", "nous sommes", False),
    ("you are", "vous etes", True),
    ("they are", "ils sont", False),
    ("you re", "tu es", True),
]
adverbs = [("", ""), ("too", "trop"), ("very", "tres"), ("really", "reellement"), ("as", "aussi")]
adjectives = [
    ("tall", "grand"),
    ("tired", "fatigue"),
    ("sorry", "desole"),
    ("proud", "fiere"),
    ("happy", "content"),
    ("sick", "malade"),
    ("ready", "pret"),
    ("busy", "occupe"),
    ("young", "jeune"),
    ("rich", "riche"),
    ("stupid", "idiote"),
]
complements = [
    ("", ""),
    ("to drive", "pour conduire"),
    ("of you", "de vous"),
    ("as his father", "que son pere"),
    ("tonight", "ce soir"),
    ("now", "maintenant"),
    ("if this is a stupid question", "si c est une question idiote"),
]
fixed = [
    ("He is not as tall as his father.", "Il n'est pas aussi grand que son père."),
    ("I am too tired to drive.", "Je suis trop fatigué pour conduire."),
    ("I'm sorry if this is a stupid question.", "Je suis désolé si c'est une question idiote."),
    ("I'm really proud of you.", "Je suis réellement fière de vous."),
]
pairs = set(fixed)
while len(pairs) < 32:
    (es, fs, vowel), (ea, fa), (ej, fj), (ec, fc) = (
        rng.choice(subjects),
        rng.choice(adverbs),
        rng.choice(adjectives),
        rng.choice(complements),
    )
    neg = rng.random() < 0.3
    fsubj, fverb = fs.split(" ")
    f = f"{fsubj} {'n' if vowel else 'ne'} {fverb} pas" if neg else fs
    e = es + (" not" if neg else "")
    e = " ".join(w for w in (e, ea, ej, ec) if w)
    f = " ".join(w for w in (f, fa, fj, fc) if w)
    if len(e.split()) < 9 and len(f.split()) < 9:
        pairs.add((e[0].upper() + e[1:] + ".", f[0].upper() + f[1:] + "."))
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
with open(out, "w", encoding="utf-8") as fh:
    for e, f in sorted(pairs):
        fh.write(f"{e}\t{f}\n")
