"""traindata.pt for pytorch/examples time_sequence_prediction, as its generate_sine_wave.py writes it
(torch.save of a float64 numpy array of shape (N, L): sine waves with random phase shifts), only
smaller (N=23 waves of L=200 points instead of 100 x 1000) so that an LBFGS step takes ~1 s.
"""

import argparse

import numpy as np
import torch

parser = argparse.ArgumentParser()
parser.add_argument("-N", type=int, default=23)
parser.add_argument("-L", type=int, default=200)
parser.add_argument("-T", type=int, default=20)
args = parser.parse_args()

np.random.seed(2)
T, L, N = args.T, args.L, args.N
x = np.empty((N, L), "int64")
x[:] = np.array(range(L)) + np.random.randint(-4 * T, 4 * T, N).reshape(N, 1)
data = np.sin(x / 1.0 / T).astype("float64")
with open("traindata.pt", "wb") as f:
    torch.save(data, f)
