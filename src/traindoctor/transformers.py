"""`traindoctor.transformers.Doctor`: the Hugging Face `Trainer` callback.

    from traindoctor.transformers import Doctor
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[Doctor()])

Importing this module imports `transformers`; `import traindoctor` does not.
"""

from __future__ import annotations

from traindoctor.integrations.transformers import Doctor, attach_trainer

__all__ = ["Doctor", "attach_trainer"]
