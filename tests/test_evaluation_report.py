"""Evaluation report, figures and atomic writes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermalens.classes import CLASS_CODES, NUM_CLASSES, RESEARCH_DISCLAIMER
from dermalens.evaluation import report as report_module
from dermalens.evaluation.metrics import compute_classification_metrics
from dermalens.evaluation.plots import (
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_training_curves,
)
from dermalens.evaluation.report import (
    SYNTHETIC_DATA_WARNING,
    atomic_write_json,
    atomic_write_text,
    render_report_markdown,
    write_evaluation_report,
)
from dermalens.inference.postprocess import calibrated_probabilities

pytestmark = pytest.mark.unit
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("confusion_matrix", "roc_curves", "precision_recall_curves", "reliability_diagram", "training_curves")

# Sparse rows as Lightning's CSVLogger writes them: lr, step losses and epoch
# validation metrics each land on their own rows.
LIGHTNING_METRICS_CSV = """\
epoch,step,lr-Adam,train/loss,val/loss,val/balanced_accuracy,val/accuracy,val/macro_f1,val/auc_macro
0,0,0.001,,,,,,
0,4,,1.90,,,,,
0,9,,1.60,,,,,
0,9,,,1.50,0.30,0.55,0.25,0.70
1,14,,1.30,,,,,
1,19,,1.10,,,,,
1,19,,,1.20,0.45,0.65,0.40,0.80
2,24,,0.90,,,,,
2,29,,0.80,,,,,
2,29,,,1.05,0.52,0.70,0.47,0.84
"""


def assert_png(path: Path, min_bytes: int = 10_000) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"


@pytest.fixture(scope="module")
def evaluation():
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.arange(NUM_CLASSES), rng.integers(0, NUM_CLASSES, 293)])
    logits = rng.normal(scale=1.5, size=(len(labels), NUM_CLASSES))
    logits[np.arange(len(labels)), labels] += 2.0
    probs = calibrated_probabilities(logits, 1.0)
    metrics = compute_classification_metrics(probs, labels, n_bootstrap=100)
    return probs, labels, metrics


@pytest.fixture
def metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(LIGHTNING_METRICS_CSV)
    return path


CONTEXT = {
    "model": "efficientnet_lite0 | cbam",
    "data": "ham10000",
    "split": "test",
    "checkpoint": "runs/x/best.ckpt",
    "temperature": 1.37,
    "tta": "hflip+vflip",
    "git_commit": "abc1234",
    "created": "2025-01-01T00:00:00Z",
}


def test_report_writes_every_file(tmp_path, evaluation, metrics_csv):
    probs, labels, metrics = evaluation
    out_dir = tmp_path / "report"
    written = write_evaluation_report(
        out_dir, metrics, probs, labels, title="Test-set evaluation", context=CONTEXT,
        metrics_csv=metrics_csv,
    )
    assert set(written) == set(FIGURES) | {"metrics_json", "report_md"}
    for name in FIGURES:
        assert written[name] == out_dir / "figures" / f"{name}.png"
        assert_png(written[name])
    assert written["metrics_json"] == out_dir / "metrics.json"
    assert written["report_md"] == out_dir / "report.md"
    assert not list(out_dir.rglob("*.tmp")), "temporary files left behind"

    saved = json.loads(written["metrics_json"].read_text())
    assert set(saved) >= {
        "accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "brier", "nll",
        "confusion_matrix", "classes", "per_class", "ci95", "n_samples", "n_bootstrap", "context",
    }
    assert saved["context"] == CONTEXT
    assert saved["disclaimer"] == RESEARCH_DISCLAIMER   # the file people pass around says it too
    assert saved["accuracy"] == pytest.approx(metrics["accuracy"])
    assert saved["ci95"]["f1_mel"] == pytest.approx(metrics["ci95"]["f1_mel"])

    text = written["report_md"].read_text()
    assert text.startswith("# Test-set evaluation")
    assert RESEARCH_DISCLAIMER in text[:600]  # near the top
    assert SYNTHETIC_DATA_WARNING not in text
    for key, value in CONTEXT.items():
        assert key in text
    assert "efficientnet_lite0 \\| cbam" in text  # pipes escaped inside the table
    low, high = metrics["ci95"]["balanced_accuracy"]
    assert f"| {metrics['balanced_accuracy']:.3f} | {low:.3f} – {high:.3f} |" in text
    for label in ("Melanoma F1", "Dermatofibroma F1", "Macro AUC", "ECE", "Brier"):
        assert label in text
    for code in CLASS_CODES:
        assert f"| {code} |" in text  # per-class row
    # Confusion-matrix row of the first class, rows = true classes.
    first_row = metrics["confusion_matrix"][0]
    assert f"| **{CLASS_CODES[0]}** | " + " | ".join(map(str, first_row)) + " |" in text
    # Figures are embedded with links relative to report.md, and they resolve.
    for name in FIGURES:
        assert f"](figures/{name}.png)" in text
        assert (out_dir / f"figures/{name}.png").is_file()


def test_a_224_px_model_scored_on_dermamnist_thumbnails_says_so_first(tmp_path):
    """`dermalens predict` cautions each image the model sees enlarged more than 3x; an evaluation of a set held
    in memory at one size (DermaMNIST's 28 px given to a 224-px model: 8x) said nothing."""
    from types import SimpleNamespace

    from dermalens.data.preprocess import Preprocessing
    from dermalens.evaluation.evaluate import low_resolution_note

    def prepared(side: int, synthetic: bool = False):
        images = np.zeros((3, side, side, 3), dtype=np.uint8)
        return SimpleNamespace(dataset=SimpleNamespace(images=images, is_synthetic=synthetic))

    pre = Preprocessing(224, (0.5,) * 3, (0.5,) * 3)
    note = low_resolution_note(prepared(28), pre)
    assert note.startswith("every image is 28 x 28 px, enlarged 8.0x to the model's 224-px input")
    assert low_resolution_note(prepared(28), Preprocessing(64, (0.5,) * 3, (0.5,) * 3)) is None   # 2.3x
    assert low_resolution_note(prepared(75), pre) is None and low_resolution_note(prepared(28, True), pre) is None
    assert low_resolution_note(SimpleNamespace(dataset=SimpleNamespace(images=None, is_synthetic=False)),
                               pre) is None   # image files: cached at the model's size, their own not kept

    labels = np.array([0, 1, 2, 3, 4, 5, 6] * 4)
    probs = calibrated_probabilities(np.eye(NUM_CLASSES)[labels] * 2.0, 1.0)
    written = write_evaluation_report(tmp_path, compute_classification_metrics(probs, labels, n_bootstrap=10),
                                      probs, labels, title="HAM10000 model on DermaMNIST",
                                      context={"low_resolution": note})
    text = written["report_md"].read_text()
    assert f"> **Low resolution:** {note}" in text and text.index("Low resolution") < text.index("## Context")


def test_report_flags_synthetic_data_and_missing_classes(tmp_path):
    labels = np.array([0, 1, 4, 5] * 10)  # bkl, df, vasc absent
    logits = np.eye(NUM_CLASSES)[labels] * 2.0
    logits[:3, CLASS_CODES.index("df")] = 5.0   # three images called df, a class without images here
    probs = calibrated_probabilities(logits, 1.0)
    metrics = compute_classification_metrics(probs, labels, n_bootstrap=20)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "training_curves.png").write_bytes(b"an earlier run's curves")
    written = write_evaluation_report(
        tmp_path, metrics, probs, labels, title="Smoke run",
        context={"data": "synthetic", "synthetic_data": True},
    )
    assert "training_curves" not in written  # no metrics.csv given
    assert not (tmp_path / "figures" / "training_curves.png").exists()   # nor an earlier run's curves
    text = written["report_md"].read_text()
    assert "Classes without images here: bkl, df, vasc." in text and "3 image(s) df" in text
    assert SYNTHETIC_DATA_WARNING in text
    # The warning comes before anything else but the title.
    assert text.index(SYNTHETIC_DATA_WARNING) < text.index(RESEARCH_DISCLAIMER) < text.index("## Context")
    assert "| df | Dermatofibroma |" in text and "| n/a |" in text  # undefined AUC shown as n/a
    assert json.loads(written["metrics_json"].read_text())["per_class"]["df"]["auc"] is None


def test_plot_functions_write_pngs(tmp_path, evaluation):
    probs, labels, metrics = evaluation
    cm_path = plot_confusion_matrix(metrics["confusion_matrix"], CLASS_CODES, tmp_path / "cm.png",
                                    normalize=False)
    roc_path = plot_roc_curves(probs, labels, CLASS_CODES, tmp_path / "sub" / "roc.png")
    reliability_path = plot_reliability_diagram(probs, labels, tmp_path / "rel.png", n_bins=10)
    for path in (cm_path, roc_path, reliability_path):
        assert_png(path)
        with Image.open(path) as png:   # the picture says what its numbers are not (its footer draws the same)
            assert png.info["Disclaimer"] == RESEARCH_DISCLAIMER
    assert roc_path == tmp_path / "sub" / "roc.png"  # parent folders are created


@pytest.mark.parametrize(
    "content",
    [
        "",                                                      # empty file
        "epoch,step,lr-Adam\n0,0,0.001\n1,10,0.0005\n",          # nothing to plot
        "step,train/loss\n0,1.0\n1,0.9\n",                       # no epoch column
    ],
)
def test_training_curves_without_usable_data_return_none(tmp_path, content):
    csv = tmp_path / "metrics.csv"
    csv.write_text(content)
    assert plot_training_curves(csv, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()


def test_training_curves_handle_missing_file_and_partial_columns(tmp_path):
    assert plot_training_curves(tmp_path / "absent.csv", tmp_path / "curves.png") is None
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss_step,train/loss_epoch\n0,4,1.5,\n0,9,,1.4\n1,19,,1.1\n")
    assert_png(plot_training_curves(csv, tmp_path / "curves.png"), min_bytes=5_000)


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"value": np.float32(0.5), "missing": float("nan"), "n": np.int64(3)})
    assert json.loads(target.read_text()) == {"value": 0.5, "missing": None, "n": 3}
    atomic_write_text(target, "second version")
    assert target.read_text() == "second version"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    atomic_write_text(target, "complete old report")

    def crash(*args, **kwargs):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(target, "new report that never lands")
    assert target.read_text() == "complete old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # temp file removed

    monkeypatch.undo()
    with pytest.raises(TypeError):  # not serialisable: fails before touching disk
        atomic_write_json(target, {"bad": object()})
    assert target.read_text() == "complete old report"


def test_report_module_exposes_atomic_writers():
    assert report_module.atomic_write_text is atomic_write_text
    assert report_module.atomic_write_json is atomic_write_json


def test_report_shows_the_decision_rule_against_the_raw_argmax(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, 200)
    probs = calibrated_probabilities(np.eye(NUM_CLASSES)[labels] * 1.5 + rng.normal(0, 1, (200, NUM_CLASSES)), 1.0)
    raw = compute_classification_metrics(probs, labels, n_bootstrap=20)
    decided = np.where(probs[:, 3] > 0.1, 3, probs.argmax(1))   # a rule that calls df more often
    metrics = compute_classification_metrics(probs, labels, n_bootstrap=20, predictions=decided)
    metrics["raw_argmax"] = {k: raw[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "ci95")}
    metrics["decision_rule"] = {"objective": "balanced accuracy, accuracy kept", "fitted_on": "out-of-fold predictions",
                                "class_bias": {"df": 0.7, "nv": 0.0}}
    metrics["melanoma_flag"] = {"threshold": 0.2, "target_specificity": 0.8, "sensitivity": 0.9, "specificity": 0.75,
                                "flagged": 61}
    text = render_report_markdown(metrics, title="t", context={}, figures={})
    section = text[text.index("## Decision rule against the raw argmax"):]
    assert "df +0.7" in section and "nv" not in section.split("\n\n")[1]
    row = next(line for line in section.splitlines() if line.startswith("| Balanced accuracy |"))
    assert f"{raw['balanced_accuracy']:.3f}" in row.split("|")[2]
    assert f"{metrics['balanced_accuracy']:.3f}" in row.split("|")[4]
    assert "sensitivity 0.900, specificity 0.750, 61 images flagged" in section
    # Without a rule (raw argmax shipped) there is no such section.
    assert "Decision rule against" not in render_report_markdown(raw, title="t", context={}, figures={})


def test_confusion_matrix_text_is_white_only_on_the_dark_half_of_the_colour_scale():
    from dermalens.evaluation.plots import cell_text_colours

    weak = np.array([[0.32, 0.24], [0.2, 0.1]])          # no share above a third: every cell is pale
    assert cell_text_colours(weak, vmax=1) == [["black", "black"], ["black", "black"]]
    assert cell_text_colours(np.array([[0.9, 0.1]]), vmax=1) == [["white", "black"]]
    assert cell_text_colours(np.array([[40, 10]]), vmax=40) == [["white", "black"]]   # counts: their own scale


def test_the_footer_of_a_narrow_figure_is_on_two_lines_that_fit():
    """On a two-class matrix (4.3 inches) the one-line notice ran past both edges."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from dermalens.evaluation.plots import footer_text

    for width in (4.3, 9.0):
        figure = Figure(figsize=(width, 3))
        canvas = FigureCanvasAgg(figure)
        text = figure.text(0.5, 0.01, footer_text(width), ha="center", fontsize=7)
        box = text.get_window_extent(canvas.get_renderer())
        assert 0 <= box.x0 and box.x1 <= width * figure.dpi, width
    assert "\n" in footer_text(4.3) and "\n" not in footer_text(9.0)
    assert footer_text(4.3).replace("\n", " ") == RESEARCH_DISCLAIMER


def test_a_one_source_generalisation_figure_is_wide_enough_for_its_title_and_legend(tmp_path):
    """At 3.4 inches the title was cut ("...balanced accurac") and the legend ran past the right edge."""
    from dermalens.evaluation.plots import plot_source_generalisation

    rows = [{"source": "rosendahl", "in_source": {"balanced_accuracy": 0.66},
             "out_of_source": {"balanced_accuracy": 0.48}}]
    with Image.open(plot_source_generalisation(rows, tmp_path / "one.png")) as png:
        assert png.width >= 5.6 * 120 and png.info["Disclaimer"] == RESEARCH_DISCLAIMER


def test_a_report_of_images_from_several_sources_gives_each_source_its_figures():
    """A model that holds on one clinic's photos and fails on another's: the pooled figures average it away."""
    import pandas as pd

    from dermalens.evaluation.metrics import figures_by_source

    classes = ["mel", "nv"]
    labels = np.array([0] * 10 + [1] * 10 + [0] * 10 + [1] * 10 + [1] * 3)
    probs = np.full((len(labels), 2), 0.1)
    probs[np.arange(len(labels)), labels] = 0.9                       # the argmax is right everywhere...
    decided = labels.copy()
    decided[20:30] = 1                                                # ...the rule calls clinic b's melanomas nv
    records = pd.DataFrame({"source": ["a"] * 20 + ["b"] * 20 + [None, float("nan"), pd.NA]})
    by_source = figures_by_source(records["source"], probs, labels, classes, decided)
    assert list(by_source) == ["a", "b", "(no source)"]   # None, NaN and NA alike: no source
    assert by_source["a"]["balanced_accuracy"] == 1.0 and by_source["b"]["balanced_accuracy"] == 0.5
    assert by_source["b"]["recall_per_class"] == {"mel": 0.0, "nv": 1.0}
    assert by_source["b"]["accuracy"] == 0.5 and by_source["b"]["auc_macro"] == 1.0   # ranking: the probabilities
    # Three nevi: no class with 10 images, no balance to speak of.
    assert by_source["(no source)"]["classes_scored"] == [] and by_source["(no source)"]["balanced_accuracy"] is None
    assert figures_by_source(["a"] * len(labels), probs, labels, classes, decided) == {}   # one source
    assert figures_by_source(None, probs, labels, classes, decided) == {}

    metrics = compute_classification_metrics(probs, labels, classes, n_bootstrap=0, predictions=decided)
    text = render_report_markdown({**metrics, "by_source": by_source}, title="t", context={}, figures={})
    assert "## By source" in text
    assert "| b | 20 | mel, nv | 0.500 | 0.500 | 1.000 | 1.000 |" in text
    assert "| (no source) | 3 | none | 1.000 | n/a | n/a | n/a |" in text
    assert "## By source" not in render_report_markdown(metrics, title="t", context={}, figures={})
