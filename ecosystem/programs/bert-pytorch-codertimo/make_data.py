"""Corpus, vocab and launcher for codertimo/BERT-pytorch.

The corpus is the README's format, one pair of consecutive sentences a line, tab-separated
("Welcome to the \\t the jungle"), from a small topic grammar: a line's second sentence
continues its first one's topic, so next-sentence prediction has a signal (a random second
sentence is from any topic) and the masked words are predictable from their neighbours. The
vocab is built by the repository's own `bert-vocab` (bert_pytorch.dataset.vocab:build). The
package's `bert` command is a console-script entry point (setup.py:
`bert = bert_pytorch.__main__:train`) and __main__.py never calls train() itself, so
`bert_train.py` is what pip writes for that entry point.
"""

import argparse
import os
import random
import subprocess
import sys

TOPICS = {
    "kitchen": (["cook", "chef", "baker"], ["cuts", "boils", "bakes"], ["bread", "soup", "onion"]),
    "farm": (["farmer", "horse", "dog"], ["plows", "feeds", "herds"], ["field", "sheep", "hay"]),
    "school": (
        ["teacher", "pupil", "dean"],
        ["reads", "writes", "grades"],
        ["book", "essay", "exam"],
    ),
    "sea": (["sailor", "captain", "diver"], ["steers", "ties", "dives"], ["boat", "rope", "reef"]),
}
FILLER = ["the", "a", "in", "at", "near", "with", "and", "then"]


def sentence(rng: random.Random, topic: str) -> str:
    subj, verb, obj = TOPICS[topic]
    words = ["the", rng.choice(subj), rng.choice(verb), rng.choice(FILLER), rng.choice(obj)]
    if rng.random() < 0.5:
        words += [rng.choice(FILLER), "the", rng.choice(obj)]
    return " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="data")
    parser.add_argument("--lines", type=int, default=1024)
    args = parser.parse_args()
    rng = random.Random(0)
    os.makedirs(args.out, exist_ok=True)
    corpus = os.path.join(args.out, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        for _ in range(args.lines):
            topic = rng.choice(sorted(TOPICS))
            f.write(f"{sentence(rng, topic)}\t{sentence(rng, topic)}\n")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from bert_pytorch.dataset.vocab import build; build()",
            "-c",
            corpus,
            "-o",
            os.path.join(args.out, "vocab.small"),
        ],
        check=True,
    )
    os.makedirs("output", exist_ok=True)  # -o output/bert.model: torch.save needs the folder
    with open("bert_train.py", "w") as f:
        f.write("import sys\nfrom bert_pytorch.__main__ import train\n\nsys.exit(train())\n")


if __name__ == "__main__":
    main()
