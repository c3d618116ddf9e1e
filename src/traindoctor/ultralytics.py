"""`traindoctor.ultralytics.attach(model)`: traindoctor for Ultralytics YOLO training.

    from ultralytics import YOLO
    import traindoctor.ultralytics

    model = YOLO("yolo11n.yaml")
    doctor = traindoctor.ultralytics.attach(model)   # before model.train()
    model.train(data="data.yaml", epochs=3)
    print(doctor.report.status)

Nothing here imports ultralytics (the trainer is read by attribute), and `import traindoctor`
does not import this module until `traindoctor.ultralytics` is used.
"""

from __future__ import annotations

from .integrations.ultralytics import Doctor, UltralyticsCallbacks, attach

# `Doctor` is the former name of UltralyticsCallbacks (deprecated alias).
__all__ = ["UltralyticsCallbacks", "attach", "Doctor"]
