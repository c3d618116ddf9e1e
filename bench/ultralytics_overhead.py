"""Overhead of `traindoctor.ultralytics.attach(model)` at default settings, against the same
YOLO11n training without it, in one process.

Trains YOLO("yolo11n.yaml") on CPU on a small generated dataset, plain and with traindoctor
attached, in alternating rounds, and prints the median step-time ratio (step =
on_train_batch_start -> on_train_batch_end: forward, loss, backward and, every `accumulate`
batches, the optimizer step) and the whole-`train()` wall-time ratio (adds the attach, the
per-epoch validations, the final best.pt check, the final diagnosis and writing the report).
Runs offline: nothing is downloaded (model from yaml, dataset drawn here, plots off).
Needs the Ultralytics venv: `make test-ultralytics` creates it, then
    .venv-ultralytics/bin/python bench/ultralytics_overhead.py [--imgsz 96] [--epochs 12] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The offline set-up and the drawn dataset of the Ultralytics tests (sets the environment
# Ultralytics reads at import, so before it is imported).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.ultralytics._offline import write_dataset  # noqa: E402

# Process CPU time by default: on a shared machine other processes' load changes wall time by
# more than the overhead measured; --clock wall measures wall time.
CLOCK = time.process_time
INSIDE: list[tuple[float, float, float]] = []  # (s in traindoctor's hooks, s in steps, s train)
WINDOWS: list[list[float]] = []  # the governor's (step, measured share, interval), last run


def run(data: Path, out: Path, args: argparse.Namespace, watched: bool) -> tuple[list, float]:
    from ultralytics import YOLO

    import traindoctor.ultralytics

    times: list[float] = []
    t0 = [0.0]
    model = YOLO("yolo11n.yaml")
    model.add_callback("on_train_batch_start", lambda t: t0.__setitem__(0, CLOCK()))
    model.add_callback("on_train_batch_end", lambda t: times.append(CLOCK() - t0[0]))
    doctor = None
    if watched:
        doctor = traindoctor.ultralytics.attach(model, out_dir=out / "td", console=False)
    start = CLOCK()
    model.train(
        data=str(data),
        imgsz=args.imgsz,
        epochs=args.epochs,
        batch=args.batch,
        nbs=args.batch,
        workers=0,
        device="cpu",
        plots=False,
        amp=False,
        seed=0,
        deterministic=True,
        project=str(out / "yolo"),
        name="run",
        exist_ok=True,
        verbose=False,
    )
    total = CLOCK() - start
    if doctor is not None:
        overhead = doctor.report.timeline.facts["overhead"]
        INSIDE.append((overhead["seconds_in_traindoctor"], sum(times), total))
        WINDOWS[:] = overhead.get("windows", [])
    return times, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--imgsz", type=int, default=96)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    import torch
    import ultralytics

    if args.threads:
        torch.set_num_threads(args.threads)
    step_ratios, steady_ratios, train_ratios = [], [], []
    plain_all: list[float] = []
    watched_all: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        data = write_dataset(out / "data", args.imgsz, args.images, 16)
        run(data, out, argparse.Namespace(**{**vars(args), "epochs": 1}), False)  # warm-up
        run(data, out, argparse.Namespace(**{**vars(args), "epochs": 1}), True)
        for i in range(args.rounds):
            # Alternate which goes first so that drift in machine speed cancels out.
            order = (True, False) if i % 2 else (False, True)
            results = {w: run(data, out, args, w) for w in order}
            (p, p_wall), (w, w_wall) = results[False], results[True]
            plain_all += p
            watched_all += w
            step_ratios.append(statistics.median(w) / statistics.median(p))
            # After the 3 structural steps (full checks, per-part gradients): sampled steps only
            steady_ratios.append(statistics.fmean(w[3:]) / statistics.fmean(p[3:]))
            train_ratios.append(w_wall / p_wall)
    steps = len(plain_all) // args.rounds
    print(
        f"Ultralytics {ultralytics.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), YOLO11n at imgsz {args.imgsz}, batch {args.batch}"
    )
    print(
        f"{steps} steps ({args.epochs} epochs of {args.images} images) x {args.rounds} rounds, "
        f"{args.clock} time, load average before: {load:.2f}"
    )
    for name, values in (("plain   ", plain_all), ("attached", watched_all)):
        print(
            f"{name} median step {statistics.median(values) * 1e3:.1f} ms, "
            f"mean {statistics.fmean(values) * 1e3:.1f} ms"
        )
    print(
        f"overhead ratio (median step time, median over rounds): {statistics.median(step_ratios):.3f}"
    )
    print("per-round ratios: " + ", ".join(f"{r:.3f}" for r in step_ratios))
    print(
        "overhead ratio (mean step time, includes structural and sampled steps): "
        f"{statistics.fmean(watched_all) / statistics.fmean(plain_all):.3f}"
    )
    print(
        "overhead ratio (mean step time after the 3 structural steps, median over rounds): "
        f"{statistics.median(steady_ratios):.3f}"
    )
    print(
        "whole train() time ratio (attach, validations, final check, report): "
        f"{statistics.median(train_ratios):.3f}"
    )
    inside = INSIDE[1:]  # without the warm-up run
    share = [h / steps_s for h, steps_s, _ in inside]
    print(
        "time in traindoctor's hooks, as it measures itself (budget governor), per attached "
        "run: "
        + ", ".join(
            f"{h:.2f} s of {t:.1f} s in steps ({r:.1%})" for (h, t, _), r in zip(inside, share)
        )
    )
    print(
        "governor windows of the last run (step: measured share of step time): "
        + ", ".join(f"{int(w[0])}: {w[1]:.1%}" for w in WINDOWS)
    )


if __name__ == "__main__":
    main()
