"""Experiment trackers: findings where users already look (W&B, TensorBoard, MLflow).

`install` subscribes an `Exporter` to a run's bus (the Doctor does, from `Options.export`):
it finds the trackers the script has active without importing their libraries, and posts
each finding as it is made, the run's status at the end and the per-layer values measured,
under a `traindoctor/` namespace. One module per tracker; content.py says what is posted,
measurements.py which values.
"""

from .exporter import FINDERS, Exporter, install

__all__ = ["FINDERS", "Exporter", "install"]
