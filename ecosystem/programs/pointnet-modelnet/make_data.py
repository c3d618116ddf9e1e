"""Synthetic ModelNet10 in the layout yanx27's ModelNetDataLoader reads (modelnet40_normal_resampled).

<root>/modelnet10_shape_names.txt, modelnet10_{train,test}.txt (ids like `sphere_0003`), and
<root>/<shape>/<id>.txt: one point a line, `x,y,z,nx,ny,nz`. Ten parametric surfaces (sphere,
cube, cylinder, cone, torus, ...), each instance randomly stretched, rotated about z and noisy,
so the class is in the shape and not in the pose or scale.
"""

import argparse
import os

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--root", default="data/modelnet40_normal_resampled")
parser.add_argument("--train", type=int, default=10, help="instances per class")
parser.add_argument("--test", type=int, default=3)
parser.add_argument("--points", type=int, default=300)
args = parser.parse_args()
rng = np.random.default_rng(0)


def sphere(n):
    p = rng.normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def cube(n):
    p = rng.uniform(-1, 1, (n, 3))
    axis = rng.integers(0, 3, n)
    p[np.arange(n), axis] = np.sign(rng.uniform(-1, 1, n))
    return p


def cylinder(n):
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([np.cos(t), np.sin(t), rng.uniform(-1, 1, n)], 1)


def cone(n):
    t, h = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 1, n)
    return np.stack([h * np.cos(t), h * np.sin(t), 1 - 2 * h], 1)


def torus(n):
    u, v = rng.uniform(0, 2 * np.pi, (2, n))
    return np.stack(
        [(1 + 0.35 * np.cos(v)) * np.cos(u), (1 + 0.35 * np.cos(v)) * np.sin(u), 0.35 * np.sin(v)],
        1,
    )


def plane(n):
    return np.stack([rng.uniform(-1, 1, n), rng.uniform(-1, 1, n), 0.02 * rng.normal(size=n)], 1)


def cross(n):
    p = np.zeros((n, 3))
    axis = rng.integers(0, 3, n)
    p[np.arange(n), axis] = rng.uniform(-1, 1, n)
    return p + 0.05 * rng.normal(size=(n, 3))


def dumbbell(n):
    p = 0.45 * sphere(n)
    p[:, 2] += np.where(rng.uniform(size=n) < 0.5, -0.6, 0.6)
    return p


def pyramid(n):
    h = rng.uniform(0, 1, n)
    s = 1 - h
    side = rng.integers(0, 4, n)
    t = rng.uniform(-1, 1, n) * s
    x = np.where(side < 2, np.where(side == 0, s, -s), t)
    y = np.where(side < 2, t, np.where(side == 2, s, -s))
    return np.stack([x, y, 2 * h - 1], 1)


def helix(n):
    t = rng.uniform(0, 4 * np.pi, n)
    return np.stack([np.cos(t), np.sin(t), t / (2 * np.pi) - 1], 1) + 0.05 * rng.normal(size=(n, 3))


SHAPES = {
    f.__name__: f
    for f in (sphere, cube, cylinder, cone, torus, plane, cross, dumbbell, pyramid, helix)
}
os.makedirs(args.root, exist_ok=True)
with open(os.path.join(args.root, "modelnet10_shape_names.txt"), "w") as f:
    f.write("\n".join(SHAPES) + "\n")
ids = {"train": [], "test": []}
for name, make in SHAPES.items():
    os.makedirs(os.path.join(args.root, name), exist_ok=True)
    for i in range(args.train + args.test):
        p = make(args.points) * rng.uniform(0.6, 1.4, 3)
        a = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        p = p @ rot.T + 0.01 * rng.normal(size=p.shape)
        normals = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-6)
        sid = f"{name}_{i + 1:04d}"
        np.savetxt(
            os.path.join(args.root, name, sid + ".txt"),
            np.hstack([p, normals]),
            delimiter=",",
            fmt="%.6f",
        )
        ids["train" if i < args.train else "test"].append(sid)
for split, names in ids.items():
    with open(os.path.join(args.root, f"modelnet10_{split}.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
