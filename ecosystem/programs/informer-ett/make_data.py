"""Writes a synthetic ETTh1.csv (hourly, 7 columns: date, six loads and the oil temperature OT).

Informer's Dataset_ETT_hour cuts rows 0-8640 / 8640-11520 / 11520-14400 into train / val /
test, so the file has 14400 hourly rows from 2016-07-01. The loads are daily and weekly cycles
with seeded noise; OT follows a smoothed mix of them, so the forecaster has signal to learn.
"""

import argparse
import os

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="data/ETT")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = 14400
    t = np.arange(n, dtype=np.float64)
    daily = np.sin(2 * np.pi * t / 24)
    weekly = np.sin(2 * np.pi * t / (24 * 7))
    cols = {}
    for k, name in enumerate(["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]):
        phase = 2 * np.pi * rng.random()
        cols[name] = (
            5
            + 3 * np.sin(2 * np.pi * t / 24 + phase)
            + (1 + 0.3 * k) * weekly
            + 0.3 * rng.standard_normal(n)
        )
    mix = 0.5 * cols["HUFL"] + 0.3 * cols["MUFL"] + 2 * daily
    ot = np.convolve(mix, np.ones(6) / 6, mode="same") + 10 + 0.2 * rng.standard_normal(n)
    frame = pd.DataFrame({"date": pd.date_range("2016-07-01", periods=n, freq="h"), **cols})
    frame["OT"] = ot
    os.makedirs(args.out, exist_ok=True)
    frame.to_csv(
        os.path.join(args.out, "ETTh1.csv"),
        index=False,
        float_format="%.3f",
        date_format="%Y-%m-%d %H:%M:%S",
    )
    with open("sitecustomize.py", "w") as f:
        f.write(
            "# Written by the ecosystem's make_data.py: NumPy 2.0 removed np.Inf, an alias of\n"
            "# np.inf that Informer's utils/tools.py reads. Put back under that name.\n"
            "import numpy\n"
            "\n"
            "if not hasattr(numpy, 'Inf'):\n"
            "    numpy.Inf = numpy.inf\n"
        )


if __name__ == "__main__":
    main()
