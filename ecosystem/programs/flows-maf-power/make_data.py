"""Synthetic UCI POWER in the MAF paper's on-disk format: <root>/power/data.npy, N x 8 float64.

pytorch-flows' datasets/power.py drops columns 3 and 1, adds its own noise and normalizes; the
eight columns here are correlated, skewed household-power-like readings (seeded).
"""

import argparse
import os

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--root", required=True)
p.add_argument("--n", type=int, default=6000)
a = p.parse_args()
rng = np.random.default_rng(0)
n = a.n
hour = rng.uniform(0, 24, n)
load = np.exp(rng.normal(0, 0.6, n) + 0.5 * np.sin(hour / 24 * 2 * np.pi))  # skewed, daily cycle
active = load + rng.normal(0, 0.05, n)
reactive = 0.1 * load**0.5 + rng.gamma(2.0, 0.02, n)
voltage = 240 - 2.0 * load + rng.normal(0, 1.0, n)
intensity = active * 4.2 + rng.normal(0, 0.1, n)
subs = rng.dirichlet([2, 1, 3], n) * active[:, None] * rng.uniform(0.5, 1.0, (n, 1)) * 10
data = np.column_stack([active, reactive, voltage, intensity, subs, hour / 24])
os.makedirs(os.path.join(a.root, "power"), exist_ok=True)
np.save(os.path.join(a.root, "power", "data.npy"), data.astype(np.float64))
