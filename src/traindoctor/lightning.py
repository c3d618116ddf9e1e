"""`Trainer(callbacks=[traindoctor.lightning.TraindoctorCallback()])`: traindoctor for Lightning.

Importing this module imports Lightning (`lightning.pytorch`, else `pytorch_lightning`);
`import traindoctor` alone never does. `PLDoctor` is the same callback for a Trainer from the
standalone `pytorch_lightning` package when both are installed.
"""

from __future__ import annotations

import importlib.util

from .integrations.lightning import attach, callback_for, lightning_callback_class

# `Doctor` is the former name of TraindoctorCallback (deprecated alias).
__all__ = ["TraindoctorCallback", "attach", "callback_for", "Doctor"]  # and PLDoctor, on first use

_HAS_LIGHTNING = importlib.util.find_spec("lightning") is not None
_HAS_PL = importlib.util.find_spec("pytorch_lightning") is not None

TraindoctorCallback = lightning_callback_class(
    "lightning.pytorch" if _HAS_LIGHTNING else "pytorch_lightning"
)
Doctor = TraindoctorCallback


def __getattr__(name: str) -> type:
    # Built on first use: importing pytorch_lightning costs seconds when it is not needed.
    if name == "PLDoctor" and _HAS_PL:
        value = lightning_callback_class("pytorch_lightning")
        globals()[name] = value
        return value
    raise AttributeError(f"module 'traindoctor.lightning' has no attribute {name!r}")
