"""The model's name as every output says it: reports, the web app, the in-browser page and the model card."""
from __future__ import annotations

import json


def model_name(meta: dict) -> str:
    """"tf_efficientnet_lite0 + CBAM", "ensemble of 5 x (tf_efficientnet_lite0 + CBAM)", or a student's
    "..., distilled from ..." from a checkpoint's (or an ONNX export's) metadata: an ensemble or a distilled
    model must not pass for one plain network anywhere it is shown."""
    config = meta.get("model_config") or {}
    name = config.get("backbone") or meta.get("backbone") or "unknown"
    if config.get("cbam"):
        name += " + CBAM"
    teacher = meta.get("distilled_from")
    if isinstance(teacher, dict) and teacher.get("teacher"):
        name += f", distilled from {teacher['teacher']}"
    ensemble = meta.get("ensemble")
    if isinstance(ensemble, str):   # metadata read as text
        try:
            ensemble = json.loads(ensemble)
        except ValueError:
            ensemble = None
    members = ensemble.get("members") if isinstance(ensemble, dict) else None
    return f"ensemble of {members} x ({name})" if members else name
