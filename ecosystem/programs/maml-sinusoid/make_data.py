"""Creates the folders the program writes into (results/, checkpoints/, images/).

The sinusoid tasks are drawn by the program itself (sinusoid.py); it only needs the output
folders that its repository ships with files in them.
"""

import os

for folder in ("results", "checkpoints", "images"):
    os.makedirs(folder, exist_ok=True)
