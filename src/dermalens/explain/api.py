"""The explanation API that the command line and the web app call.

    explainer = Explainer.from_checkpoint("best.ckpt")
    explanation = explainer.explain(rgb_uint8, method="gradcam", target_class="mel")
    save_overlay_png(explanation, "mel_gradcam.png")

Every picture it draws carries the research-tool disclaimer: a heatmap shows
where the model looked, not where a lesion is or what it is.

One answer per image: the probabilities an explanation reports (and its
caption shows) are the predictor's, with its calibrated temperature and its
flip TTA, exactly what `dermalens predict` and the web app's prediction say;
a caller that already has them (the web app) hands them in. The map itself is
computed on one view (the unflipped image), and the caption says so.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..atomic_io import atomic_write_bytes
from ..classes import CLASS_CODES, RESEARCH_DISCLAIMER, class_index, class_name, validate_class_set
from ..data.geometry import fit_to_square
from ..data.preprocess import Preprocessing
from ..data.transforms import preprocess_image
from ..inference.postprocess import DecisionRule
from ..inference.prediction import image_caution
from ..inference.predictor import Predictor
from .base import AttributionMethod, model_device, private_module_tree
from .display import check_aspect_ratio
from .metrics import centre_mask, energy_share
from .names import DEFAULT_SHAP_MAX_EVALS, METHOD_LABELS, METHODS, REGISTRY, check_method, method_label
from .overlay import display_image, heatmap_at_size, png_bytes, render_overlay

__all__ = ["METHODS", "METHOD_LABELS", "Explanation", "Explainer", "explain_image", "overlay_png_bytes",
           "save_overlay_png", "check_method"]


def check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


@dataclass
class Explanation:
    """One explained image.

    heatmap: float32 (h, w) in [0, 1] over the image at its display size: the
    original size, shrunk to at most 1024 px on the longest side
    (`display.DISPLAY_MAX_SIDE`; SHAP: the positive attribution of the target
    class, normalised). image_size: the original (height, width). raw_map:
    float32, signed, at the method's own resolution before upsampling: the
    target layer's grid for CAMs (before ReLU), the model's input grid for
    SHAP. overlay: RGB uint8, the heatmap over the image with a caption band
    BELOW it (the predictor's class and probability, the map's class, the
    research-tool note); its top rows are the display image (times a whole
    factor when it is narrower than 360 px, never past 1024 px).
    probabilities: the predictor's (temperature, and flip TTA when `tta`);
    the map comes from the unflipped view alone.
    """

    method: str
    target_class: str
    probabilities: dict[str, float]
    heatmap: np.ndarray
    raw_map: np.ndarray
    overlay: np.ndarray
    class_maps: dict[str, np.ndarray] | None = None   # SHAP: every class's signed map
    seconds: float = 0.0
    image_size: tuple[int, int] | None = None          # the original (height, width); None: the heatmap's
    tta: bool = False
    temperature: float = 1.0
    decided_class: str | None = None    # the class the model's decision rule reports (None: the most probable)
    melanoma_flag: bool | None = None   # P(mel) at or above the model's operating point (None: it has none)
    caution: str | None = None          # why the answer is unreliable (prediction.image_caution), None: nothing known
    disclaimer: str = field(default=RESEARCH_DISCLAIMER, repr=False)

    @property
    def predicted_class(self) -> str:
        """The class the predictor reports: its decision rule's, else the most probable."""
        return self.decided_class or max(self.probabilities, key=self.probabilities.get)

    @property
    def centre_energy_share(self) -> float:
        """Share of the heatmap's mass in the central box (half of each side, a quarter of the area)."""
        return energy_share(self.heatmap, centre_mask(self.heatmap.shape))

    def summary(self) -> dict:
        """JSON-ready facts about the explanation (no arrays)."""
        height, width = self.heatmap.shape
        image_height, image_width = self.image_size or (height, width)
        mass = self.heatmap.astype(np.float64)
        total = mass.sum() or 1.0
        centroid_y = float((mass.sum(axis=1) * (np.arange(height) + 0.5)).sum() / total / height)
        centroid_x = float((mass.sum(axis=0) * (np.arange(width) + 0.5)).sum() / total / width)
        return {
            "method": self.method,
            "target_class": self.target_class,
            "target_probability": self.probabilities[self.target_class],
            "predicted_class": self.predicted_class,
            "predicted_probability": self.probabilities[self.predicted_class],
            "melanoma_flag": self.melanoma_flag,
            "probabilities": dict(self.probabilities),
            "centre_energy_share": self.centre_energy_share,
            "centroid_x": centroid_x,   # the heatmap's centre of mass, as a fraction of width / height
            "centroid_y": centroid_y,
            "image_height": image_height,
            "image_width": image_width,
            "heatmap_shape": [height, width],
            "raw_map_shape": list(self.raw_map.shape),
            "tta": self.tta,                    # the probabilities: the predictor's views and temperature
            "temperature": self.temperature,
            "map_view": "unflipped image",      # the map: one view
            "caution": self.caution,
            "seconds": self.seconds,
            "disclaimer": self.disclaimer,
        }


class Explainer:
    """A model and its preprocessing, ready to explain images; safe to share between threads.

    The model is never modified: forward passes run on private module trees
    that share its weights (hooks and layer swaps stay private), and each CAM
    method runs one image at a time under its own lock. Methods come from
    `names.REGISTRY`: each is built on first use from the same settings
    (model, preprocessing, temperature, cam_layer) and called the same way.
    `temperature` (from training's calibration) and `tta` (average four
    flipped views) make the reported probabilities those `Predictor` reports
    (they are computed by one, on a private view of the model); the maps are
    computed on the unflipped view. `shap_max_evals` is
    the budget (`max_evals`; only SHAP spends one) used when `explain` is not
    given one: SHAP costs about max_evals forward passes (EfficientNet-B3 at
    300 px: ~0.2 s each on one CPU core, so 300 evaluations take over a
    minute; use ~50 there).
    """

    def __init__(self, model: torch.nn.Module, preprocessing: Preprocessing, temperature: float = 1.0,
                 shap_max_evals: int = DEFAULT_SHAP_MAX_EVALS, cam_layer: str = "final",
                 classes: Sequence[str] | None = None, tta: bool = False, decision: DecisionRule | None = None):
        self.model = model
        self.preprocessing = preprocessing
        # The model's class codes, in output order (default HAM10000's 7), checked against its head.
        num_outputs = getattr(getattr(model, "config", None), "num_classes", None)
        self.classes = validate_class_set(CLASS_CODES if classes is None else classes, "the model's classes",
                                          num_outputs=num_outputs)
        self.temperature = float(temperature)
        self.tta = bool(tta)
        self.decision = decision   # the predictor's rule for which class to report (None: the most probable)
        self.shap_max_evals = int(shap_max_evals)
        self.cam_layer = cam_layer   # Grad-CAM / Grad-CAM++: "final" (the pooled map) or "stride16"
        self._inference_view = private_module_tree(model)   # never carries hooks
        # The probabilities: the predictor's own code (views, temperature), on the hook-free view.
        self._predictor = Predictor(self._inference_view, {"preprocessing": preprocessing, "classes": self.classes},
                                    temperature=self.temperature, tta=self.tta)
        self._methods: dict[str, AttributionMethod] = {}
        self._methods_lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **kwargs) -> "Explainer":
        """A checkpoint (.ckpt) or a model package folder: CAMs need the PyTorch model, never the ONNX one."""
        return cls.from_predictor(Predictor.from_checkpoint(path, device=device), **kwargs)

    @classmethod
    def from_predictor(cls, predictor, **kwargs) -> "Explainer":
        """Shares the predictor's model (no copy of the weights), its temperature and its TTA."""
        return cls(predictor.model, predictor.preprocessing, temperature=predictor.temperature,
                   classes=predictor.classes, tta=predictor.tta, decision=getattr(predictor, "decision", None),
                   **kwargs)

    def method(self, name: str) -> AttributionMethod:
        """The registered method (names.REGISTRY), built on first use and kept."""
        name = check_method(name)
        with self._methods_lock:
            if name not in self._methods:
                method_class = REGISTRY[name].load()
                self._methods[name] = method_class(self.model, self.preprocessing, temperature=self.temperature,
                                                   cam_layer=self.cam_layer)
            return self._methods[name]

    def refusals(self, names: Sequence[str]) -> dict[str, str]:
        """{method: why} for each of `names` this model cannot be explained with (Ablation-CAM of an ensemble),
        found by building the method, so a caller can say so before any work."""
        refused = {}
        for name in names:
            try:
                self.method(name)
            except ValueError as error:
                refused[name] = str(error)
        return refused

    @torch.inference_mode()
    def probabilities(self, input_tensor: torch.Tensor) -> np.ndarray:
        """Single-view probabilities of a preprocessed batch of one (no TTA), at the temperature."""
        logits = self._inference_view(input_tensor.to(model_device(self._inference_view))).float()
        return torch.softmax(logits / self.temperature, dim=1)[0].cpu().numpy()

    def predict(self, image: np.ndarray) -> dict[str, float]:
        """The predictor's probabilities for one image: temperature and, when `tta`, four flipped views."""
        return {code: float(p) for code, p in zip(self.classes, self._predictor.predict_arrays([image])[0])}

    def _served(self, probabilities: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
        if isinstance(probabilities, Mapping):
            if set(probabilities) != set(self.classes):
                raise ValueError(f"probabilities name the classes {sorted(probabilities)}; this model's are "
                                 f"{', '.join(self.classes)}")
            return {code: float(probabilities[code]) for code in self.classes}
        values = np.asarray(probabilities, dtype=np.float64).ravel()
        if values.shape != (len(self.classes),):
            raise ValueError(f"expected {len(self.classes)} probabilities, got {values.shape[0]}")
        return {code: float(p) for code, p in zip(self.classes, values)}

    def explain(self, image: np.ndarray, method: str = "gradcam", target_class: str | None = None, *,
                shap_max_evals: int | None = None,
                probabilities: Mapping[str, float] | Sequence[float] | None = None) -> Explanation:
        """Explain one RGB uint8 image of any size for `target_class` (default: the predicted class).

        probabilities: what the predictor serving this image answered (class code -> p, or in class
        order); None: computed here by the same predictor code (`predict`). Images thinner than
        10:1 are refused (`display.ImageShapeError`, a ValueError naming the size), and so are images the
        predictions refuse (`prediction.image_caution`: under 16 pixels a side), whose caution the caption
        repeats.
        """
        method = check_method(method)
        image = check_image(image)
        check_aspect_ratio(*image.shape[:2])
        caution = image_caution(image, self.preprocessing)
        target_index = class_index(target_class, self.classes) if target_class is not None else None
        started = time.perf_counter()
        probs = self.predict(image) if probabilities is None else self._served(probabilities)
        decided = self.decided_class(probs)
        if target_index is None:
            target_index = self.classes.index(decided)
        explainer = self.method(method)
        pre = self.preprocessing
        input_tensor = preprocess_image(image, pre)[None]
        model_image = fit_to_square(image, pre.image_size, pre.geometry)   # the pixels the model saw
        attribution = explainer.attribute(model_image, input_tensor, target_index,
                                          max_evals=shap_max_evals or self.shap_max_evals)
        shown = display_image(image)   # heatmap and overlay at display size, whatever the upload's size
        heatmap = heatmap_at_size(attribution.raw_map, *shown.shape[:2], geometry=pre.geometry)
        target = self.classes[target_index]
        flag = self.melanoma_flag(probs)
        overlay = render_overlay(shown, heatmap, caption_lines(method, target, probs, self.tta, self.temperature,
                                                               decided, flag, caution))
        return Explanation(
            method=method, target_class=target, probabilities=probs, heatmap=heatmap,
            raw_map=np.asarray(attribution.raw_map, dtype=np.float32), overlay=overlay,
            class_maps=({self.classes[k]: m for k, m in attribution.class_maps.items()}
                        if attribution.class_maps is not None else None),
            seconds=time.perf_counter() - started, image_size=(int(image.shape[0]), int(image.shape[1])),
            tta=self.tta, temperature=self.temperature, decided_class=decided, melanoma_flag=flag, caution=caution,
        )

    def decided_class(self, probabilities: dict[str, float]) -> str:
        """The class the predictor reports for these probabilities (its decision rule, else the argmax)."""
        if self.decision is None:
            return max(probabilities, key=probabilities.get)
        row = np.array([[probabilities[code] for code in self.classes]])
        return self.classes[int(self.decision.decide(row)[0])]

    def melanoma_flag(self, probabilities: dict[str, float]) -> bool | None:
        """The predictor's melanoma flag for these probabilities (None: its rule has no operating point)."""
        if self.decision is None:
            return None
        flags = self.decision.melanoma_flags(np.array([[probabilities[code] for code in self.classes]]))
        return None if flags is None else bool(flags[0])


def predictor_description(tta: bool, temperature: float) -> str:
    views = "mean of 4 flipped views" if tta else "one view"
    return f"{views}, temperature {temperature:.2f}" if temperature != 1.0 else views


def caption_lines(method: str, target: str, probabilities: dict[str, float], tta: bool = False,
                  temperature: float = 1.0, predicted: str | None = None,
                  melanoma_flag: bool | None = None, caution: str | None = None) -> list[str]:
    """The overlay's caption: the predictor's answer (how it was computed), its melanoma flag when it
    has an operating point and the image's caution, as `dermalens predict` states them; the map's class and
    view."""
    predicted = predicted or max(probabilities, key=probabilities.get)
    lines = [f"Model output: {predicted} ({class_name(predicted)}) {probabilities[predicted]:.1%} "
             f"({predictor_description(tta, temperature)})"]
    if melanoma_flag is not None:
        lines.append("Melanoma flag: " + ("RAISED (P(mel) at or above the model's operating point)"
                                          if melanoma_flag else "not raised"))
    if caution:
        lines.append(f"Caution: {caution}")
    lines += [f"{method_label(method)} map for: {target} ({class_name(target)}) {probabilities[target]:.1%}; "
              f"map from the unflipped image only",
              RESEARCH_DISCLAIMER]
    return lines


def explain_image(model: torch.nn.Module, image: np.ndarray, preprocessing: Preprocessing, method: str = "gradcam",
                  target_class: str | None = None, shap_max_evals: int = DEFAULT_SHAP_MAX_EVALS,
                  classes: Sequence[str] | None = None) -> Explanation:
    """One-off explanation (classes: the model's, default HAM10000's 7); keep an `Explainer` for many images."""
    return Explainer(model, preprocessing, shap_max_evals=shap_max_evals,
                     classes=classes).explain(image, method, target_class)


def _png_text(explanation: Explanation) -> dict[str, str]:
    return {
        "Software": "dermalens",
        "Description": f"{explanation.method} map for class {explanation.target_class}",
        "Disclaimer": explanation.disclaimer,
    }


def overlay_png_bytes(explanation: Explanation) -> bytes:
    return png_bytes(explanation.overlay, _png_text(explanation))


def save_overlay_png(explanation: Explanation, path: str | Path) -> Path:
    return atomic_write_bytes(path, overlay_png_bytes(explanation))
