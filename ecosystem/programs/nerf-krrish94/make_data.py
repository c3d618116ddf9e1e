"""A synthetic Blender-format scene and a small config for krrish94/nerf-pytorch.

<basedir>/transforms_{train,val,test}.json (camera_angle_x, frames with file_path and a 4x4
camera-to-world transform_matrix) and RGBA PNGs of 800 x 800 px (the loader's `half_res`
resizes every image to 400 x 400 whatever its size, and leaves them as numpy arrays, which the
training loop cannot `.to(device)`, without it). Each image is a ray-cast render of a sphere of
radius 1 at the origin, coloured by its surface normal, on a transparent background, seen from
cameras on a sphere of radius 4 (the loader's own `pose_spherical` convention).

`nerf_helpers.py` imports `torchsearchsorted`, a CUDA extension whose function torch has had
built in as `torch.searchsorted` since 1.6 (same arguments, `side="right"` included): a
two-line module of that name (on PYTHONPATH=.) stands for it. The config (ours) is the lego
config shrunk: 60 iterations of 256 random rays, 4 coarse + 4 fine samples a ray, Adam at 5e-3
(the model's size is not read from the config: `FlexibleNeRFModel` gets its default 4 layers of
128). The two full-image validation renders (400 x 400 rays, at the first and the last
iteration) dominate the run's time; they use the `train` sampling settings, not `validation`'s
(`run_one_iter_of_nerf` calls `predict_and_render_radiance` without its mode): upstream.
"""

import json
import os

import numpy as np
from PIL import Image

BASE = os.path.join("cache", "nerf_synthetic", "sphere")
S, ANGLE = 800, 0.6911112070083618  # the lego scene's camera_angle_x


def pose_spherical(theta: float, phi: float, radius: float) -> np.ndarray:
    t = np.eye(4)
    t[2, 3] = radius
    p = np.eye(4)
    p[1, 1] = p[2, 2] = np.cos(phi / 180 * np.pi)
    p[1, 2] = -np.sin(phi / 180 * np.pi)
    p[2, 1] = -p[1, 2]
    r = np.eye(4)
    r[0, 0] = r[2, 2] = np.cos(theta / 180 * np.pi)
    r[0, 2] = -np.sin(theta / 180 * np.pi)
    r[2, 0] = -r[0, 2]
    flip = np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    return flip @ r @ p @ t


def render(c2w: np.ndarray) -> np.ndarray:
    focal = 0.5 * S / np.tan(0.5 * ANGLE)
    j, i = np.mgrid[0:S, 0:S].astype(np.float64)
    dirs = np.stack([(i - S * 0.5) / focal, -(j - S * 0.5) / focal, -np.ones_like(i)], -1)
    d = dirs @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = c2w[:3, 3]
    b = d @ o
    disc = b**2 - (o @ o - 1.0)
    hit = disc > 0
    t = -b - np.sqrt(np.where(hit, disc, 0.0))
    n = o + t[..., None] * d
    rgba = np.zeros((S, S, 4))
    rgba[..., :3] = np.where(hit[..., None], 0.5 + 0.45 * n, 0.0)
    rgba[..., 3] = hit
    return (rgba * 255).round().astype(np.uint8)


os.makedirs(BASE, exist_ok=True)
rng = np.random.default_rng(0)
for split, n in (("train", 6), ("val", 1), ("test", 1)):
    os.makedirs(os.path.join(BASE, split), exist_ok=True)
    frames = []
    for k in range(n):
        c2w = pose_spherical(rng.uniform(-180, 180), rng.uniform(-60, -10), 4.0)
        Image.fromarray(render(c2w)).save(os.path.join(BASE, split, f"r_{k}.png"))
        frames.append({"file_path": f"./{split}/r_{k}", "transform_matrix": c2w.tolist()})
    with open(os.path.join(BASE, f"transforms_{split}.json"), "w") as f:
        json.dump({"camera_angle_x": ANGLE, "frames": frames}, f)

with open("torchsearchsorted.py", "w") as f:
    f.write(
        "from torch import searchsorted  # noqa: F401  (torchsearchsorted, merged into torch 1.6)\n"
    )

MODEL = {
    "type": "FlexibleNeRFModel",
    "num_layers": 4,
    "hidden_size": 128,
    "skip_connect_every": 3,
    "include_input_xyz": True,
    "log_sampling_xyz": True,
    "num_encoding_fn_xyz": 6,
    "use_viewdirs": True,
    "include_input_dir": True,
    "num_encoding_fn_dir": 4,
    "log_sampling_dir": True,
}
cfg = {
    "experiment": {
        "id": "sphere",
        "logdir": "logs",
        "randomseed": 42,
        "train_iters": 60,
        "validate_every": 1000,
        "save_every": 1000,
        "print_every": 10,
    },
    "dataset": {
        "type": "blender",
        "basedir": BASE,
        "half_res": True,
        "testskip": 1,
        "no_ndc": True,
        "near": 2,
        "far": 6,
    },
    "models": {"coarse": MODEL, "fine": MODEL},
    "optimizer": {"type": "Adam", "lr": 5.0e-3},
    "scheduler": {"lr_decay": 250, "lr_decay_factor": 0.1},
    "nerf": {
        "use_viewdirs": True,
        "encode_position_fn": "positional_encoding",
        "encode_direction_fn": "positional_encoding",
        "train": {
            "num_random_rays": 256,
            "chunksize": 16384,
            "perturb": True,
            "num_coarse": 4,
            "num_fine": 4,
            "white_background": False,
            "radiance_field_noise_std": 0.2,
            "lindisp": False,
        },
        "validation": {
            "chunksize": 16384,
            "perturb": False,
            "num_coarse": 4,
            "num_fine": 4,
            "white_background": False,
            "radiance_field_noise_std": 0.0,
            "lindisp": False,
        },
    },
}
os.makedirs("config", exist_ok=True)
with open(os.path.join("config", "sphere.yml"), "w") as f:
    json.dump(cfg, f, indent=1)  # JSON is YAML
