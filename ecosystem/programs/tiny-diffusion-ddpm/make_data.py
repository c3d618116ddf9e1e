"""Writes static/DatasaurusDozen.tsv (tab-separated: dataset, x, y) as tiny-diffusion reads it.

The real file holds 13 shapes of 142 points each in [0, 100]; ours writes the same columns
with a synthetic "dino" (a seeded outline: a body ellipse, a neck and a head) and one other
shape, so that `datasets.dino_dataset` (which keeps rows whose dataset is "dino") works unchanged.
"""

import argparse
import math
import random
from pathlib import Path


def _dino(rng: random.Random, n: int) -> list[tuple[float, float]]:
    points = []
    for i in range(n):
        part = i % 3
        t = rng.random()
        if part == 0:  # body: an ellipse outline
            a = 2 * math.pi * t
            points.append((50 + 22 * math.cos(a), 30 + 12 * math.sin(a)))
        elif part == 1:  # neck: a slanted segment
            points.append((62 + 10 * t, 40 + 40 * t))
        else:  # head: a small circle
            a = 2 * math.pi * t
            points.append((74 + 6 * math.cos(a), 86 + 5 * math.sin(a)))
    return points


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="static/DatasaurusDozen.tsv")
    parser.add_argument("--points", type=int, default=142)
    args = parser.parse_args()
    rng = random.Random(0)
    rows = ["dataset\tx\ty"]
    for x, y in _dino(rng, args.points):
        rows.append(f"dino\t{x:.4f}\t{y:.4f}")
    for _ in range(args.points):
        rows.append(f"away\t{rng.uniform(15, 95):.4f}\t{rng.uniform(0, 100):.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
