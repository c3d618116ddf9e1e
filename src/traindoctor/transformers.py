"""`traindoctor.transformers.Doctor`: the Hugging Face `Trainer` callback.

    from traindoctor.transformers import TraindoctorCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[TraindoctorCallback()])

Importing this module imports `transformers`; `import traindoctor` does not.
"""

from __future__ import annotations

from traindoctor.integrations.transformers import Doctor, TraindoctorCallback, attach_trainer

# `Doctor` is the former name of TraindoctorCallback (deprecated alias).
__all__ = ["TraindoctorCallback", "attach_trainer", "Doctor"]
