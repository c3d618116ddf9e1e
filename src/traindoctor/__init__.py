"""traindoctor: tells you why your PyTorch training is not learning.

import traindoctor as td
doc = td.watch(model, optimizer)          # attaches hooks; nothing else in the loop changes
...                                       # train as usual; doc.log(loss=loss) is optional
report = doc.close()                      # console summary + traindoctor-runs/<run-id>/
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import watch  # noqa: E402
from .doctor import Doctor  # noqa: E402
from .errors import UsageError  # noqa: E402
from .findings import Finding, Severity, Where  # noqa: E402
from .report.model import Report  # noqa: E402

__all__ = ["watch", "Doctor", "Finding", "Severity", "Where", "Report", "UsageError", "__version__"]
