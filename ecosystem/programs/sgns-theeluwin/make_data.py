"""Writes a synthetic corpus and runs the program's own preprocess.py on it.

The corpus is sentences from a small grammar (subject, verb, object, place) whose words
co-occur by topic, so skip-gram has structure to learn. preprocess.py turns it into the
pickles train.py reads (idx2word.dat, wc.dat, train.dat, ...) under data/.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="data")
    parser.add_argument("--sentences", type=int, default=3000)
    args = parser.parse_args()
    rng = random.Random(0)
    os.makedirs(args.out, exist_ok=True)
    corpus = os.path.join(args.out, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        for _ in range(args.sentences):
            subj, verb, obj = TOPICS[rng.choice(sorted(TOPICS))]
            words = ["the", rng.choice(subj), rng.choice(verb), rng.choice(FILLER), rng.choice(obj)]
            if rng.random() < 0.5:
                words += [rng.choice(FILLER), rng.choice(obj)]
            f.write(" ".join(words) + "\n")
    subprocess.run(
        [
            sys.executable,
            "preprocess.py",
            "--data_dir",
            args.out,
            "--vocab",
            corpus,
            "--corpus",
            corpus,
            "--window",
            "3",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    main()
