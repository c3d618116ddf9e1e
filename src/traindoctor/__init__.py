"""traindoctor: tells you why your PyTorch training is not learning.

import traindoctor as td
doc = td.watch(model, optimizer)          # attaches hooks; nothing else in the loop changes
...                                       # train as usual; doc.log(loss=loss) is optional
report = doc.close()                      # console summary + traindoctor-runs/<run-id>/
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "watch",
    "evaluate",
    "explain_gradients",
    "trace_lines",
    "GradientPath",
    "Doctor",
    "Finding",
    "Severity",
    "Where",
    "Report",
    "UsageError",
    "__version__",
]

# Imported on first use, so that `traindoctor rules` / `explain` / `report` do not pay for
# importing torch (seconds); the rules themselves never import torch.
_LAZY = {
    "watch": ".api",
    "evaluate": ".evaluation",
    "explain_gradients": ".gradpath",
    "trace_lines": ".gradpath",
    "GradientPath": ".gradpath",
    "Doctor": ".doctor",
    "Finding": ".findings",
    "Severity": ".findings",
    "Where": ".findings",
    "Report": ".report.model",
    "UsageError": ".errors",
}

# Public functions whose arguments api.py checks before calling them.
_CHECKED = ("evaluate", "explain_gradients")

if TYPE_CHECKING:
    from .api import watch
    from .doctor import Doctor
    from .errors import UsageError
    from .findings import Finding, Severity, Where
    from .gradpath import GradientPath, explain_gradients, trace_lines
    from .report.model import Report


# Framework integrations, as submodules imported on first use: `traindoctor.lightning.Doctor()`
# works after a plain `import traindoctor` without importing the framework before it is asked.
_SUBMODULES = ("lightning", "transformers", "accelerate", "ultralytics")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'traindoctor' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    if name in _CHECKED:
        # The same function behind the one-line input checks of api.py (UsageError naming
        # the bad value and what to pass), under the original's name, module and doc.
        import functools

        checked = getattr(importlib.import_module(".api", __name__), name)
        value = functools.update_wrapper(checked, value)
    globals()[name] = value
    return value
