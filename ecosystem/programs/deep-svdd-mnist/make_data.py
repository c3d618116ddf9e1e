"""Synthetic MNIST for Deep SVDD: examples-mnist's generator, in the folder its MNIST subclass reads.

The program subclasses torchvision's MNIST as `MyMNIST`, and torchvision looks for the raw files
under `<root>/<class name>/raw`, so the idx files are written there (same images as
`../examples-mnist/make_data.py` gives for the same arguments).
"""

import os
import runpy
import shutil
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv else "../data"
sys.argv = [os.path.join(here, "..", "examples-mnist", "make_data.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
dst = os.path.join(root, "MyMNIST")
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(os.path.join(root, "MNIST"), dst)
