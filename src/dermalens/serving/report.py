"""The downloadable result: one PNG with the image, the heatmap, the probabilities and the disclaimer.

Someone who saves what the page showed should not be able to save it without
the research-tool note, so it is drawn into the picture (and written into the
file's metadata), not left to the page around it.
"""
from __future__ import annotations

import io
import math
import textwrap
import threading

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..classes import RESEARCH_DISCLAIMER, class_name
from ..explain.names import METHOD_LABELS

DISPLAY_SIDE = 1024   # larger images are thinned before drawing: the panels are smaller than that anyway
# Matplotlib is not thread-safe, even with one Figure per thread (shared font and
# text caches); a report takes a fraction of a second, so they are drawn one at a time.
_DRAW_LOCK = threading.Lock()


def thin(array: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    step = max(1, math.ceil(max(array.shape[:2]) / side))
    return array[::step, ::step]


def matching(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The image at the heatmap's size (an explanation's heatmap is at display size, not the upload's)."""
    if image.shape[:2] == tuple(shape):
        return image
    import cv2

    return cv2.resize(np.ascontiguousarray(image), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def report_png(image: np.ndarray, probabilities: dict[str, float], heatmap: np.ndarray, method: str,
               target_class: str, model_name: str, source: str, decided_class: str | None = None,
               decision_rule: str = "raw argmax", melanoma_flag: bool | None = None,
               caution: str | None = None) -> bytes:
    """image: RGB uint8 (H, W, 3); heatmap: float (h, w) in [0, 1] over the whole image, at any size;
    probabilities: class code -> p, the served predictor's (the map comes from one view); decided_class,
    decision_rule, melanoma_flag, caution: the served answer (`Prediction`), which a fitted rule may make
    another class than the most probable one; the picture states that answer, as the page does."""
    heatmap = thin(np.asarray(heatmap, dtype=np.float32))
    shown = matching(image, heatmap.shape)
    ranked = sorted(probabilities.items(), key=lambda item: item[1])   # barh draws bottom-up: top class last
    top = ranked[-1][0]
    answer = decided_class or top
    label = METHOD_LABELS.get(method, method)
    with _DRAW_LOCK:
        # Constrained layout keeps the titles, class names and the note clear of each other.
        figure = Figure(figsize=(16, 6.4), dpi=110, layout="constrained")
        FigureCanvasAgg(figure)
        grid = figure.add_gridspec(1, 3, width_ratios=[1, 1, 0.9])
        photo = figure.add_subplot(grid[0])
        photo.imshow(shown)
        # The file name and the model's name come from outside: drawn as written, never as matplotlib's
        # math text (a "$" in a name would be parsed, and an unbalanced one fails the whole report).
        photo.set_title(f"Uploaded image: {source}\n{image.shape[1]} x {image.shape[0]} px", fontsize=11,
                        parse_math=False)
        photo.axis("off")

        heat = figure.add_subplot(grid[1])
        heat.imshow(shown)
        layer = heat.imshow(heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        heat.set_title(f"{label} map for {target_class} ({class_name(target_class)}), from the unflipped image",
                       fontsize=11)
        heat.axis("off")
        figure.colorbar(layer, ax=heat, fraction=0.035, pad=0.02, label="relative evidence")

        bars = figure.add_subplot(grid[2])
        codes = [code for code, _ in ranked]
        values = [p for _, p in ranked]
        drawn = bars.barh([f"{code}: {class_name(code)}" for code in codes], values,
                          color=["#c05621" if code == answer else "#2f6f9f" for code in codes])
        bars.bar_label(drawn, labels=[f"{p:.1%}" for p in values], padding=3, fontsize=9)
        bars.set_xlim(0, 1.15)
        bars.set_xlabel("probability")
        bars.set_title("Class probabilities", fontsize=11)
        bars.tick_params(axis="y", labelsize=9)
        bars.spines[["top", "right"]].set_visible(False)

        title = f"dermalens: {model_name}, answer {answer} ({class_name(answer)}) {probabilities[answer]:.1%}"
        if answer != top:
            title += f"; most probable {top} ({class_name(top)}) {probabilities[top]:.1%}"
        detail = f"decision rule: {decision_rule}"
        if melanoma_flag is not None:
            detail += "; melanoma flag " + ("RAISED" if melanoma_flag else "not raised")
        if caution:   # a long sentence: wrapped, as the overlay's caption wraps it
            detail += "\n" + "\n".join(textwrap.wrap(f"caution: {caution}", 110))
        figure.suptitle(f"{title}\n{detail}", fontsize=13, fontweight="bold", parse_math=False)
        figure.supxlabel(RESEARCH_DISCLAIMER, fontsize=12,
                         bbox={"boxstyle": "round", "facecolor": "#fff4e5", "edgecolor": "#f0b429"})
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={
            "Software": "dermalens", "Title": f"{label} report for {source}", "Disclaimer": RESEARCH_DISCLAIMER})
    return buffer.getvalue()
