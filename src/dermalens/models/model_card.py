"""MODEL_CARD.md of a model package: intended use, data and licence, split, metrics with CIs, limits.

Rendered from the package's config.json alone (`package.build_config`), so
the card can never say something the package does not carry. It starts with
the Hugging Face Hub's YAML header, so it serves as the repository's README.
Metrics and their 95% CIs are written by `dermalens.reporting`, as everywhere.
"""
from __future__ import annotations

from ..classes import CLASS_CODES as HAM10000_CODES
from ..classes import RESEARCH_DISCLAIMER, class_name
from ..reporting import ci_of, format_interval, format_metric_ci, format_value
from .description import model_name

__all__ = ["render_model_card"]


def _share(fraction) -> str:
    return "?" if fraction is None else f"{fraction:.0%}"


def _metrics_section(config: dict) -> list[str]:
    test = config.get("test_metrics")
    if not test:
        val = config.get("val_metrics") or {}
        lines = ["No test metrics: the run holds no test evaluation of this checkpoint (`evaluation.after_training` "
                 "off, an evaluation stopped before it finished, which `dermalens train --resume RUN` completes, or a "
                 "checkpoint other than the one evaluated). Validation metrics, used to choose the checkpoint "
                 "and therefore optimistic:", "", "| metric | value |", "|---|---|"]
        return lines + [f"| {k.removeprefix('val/')} | {format_value(v)} |" for k, v in sorted(val.items())]
    ci = test.get("ci95", {})
    rule = (test.get("decision_rule") or config.get("decision") or {})
    under_rule = any((rule.get("class_bias") or {}).values())
    lines = [f"Test split, {test.get('n_samples')} images, used once after training; 95% confidence intervals "
             f"from {test.get('n_bootstrap')} bootstrap resamples of the images. Probabilities at temperature "
             f"{test.get('temperature', config['temperature']):.3f}; "
             + ("the classes are the decision rule's (below), as `dermalens predict` reports them, with the raw "
                "argmax beside them." if under_rule else "the classes are the argmax of the probabilities."), "",
             "| metric | value | 95% CI |", "|---|---|---|"]
    for key, label in (("balanced_accuracy", "balanced accuracy (ISIC 2018 metric)"), ("accuracy", "accuracy"),
                       ("macro_f1", "macro F1"), ("auc_macro", "macro AUC"), ("ece", "ECE"), ("brier", "Brier")):
        lines.append(f"| {label} | {format_value(test.get(key))} | {format_interval(ci_of(ci, key))} |")
    raw = test.get("raw_argmax") or {}
    if under_rule and raw:
        raw_ci = raw.get("ci95", {})
        for key, label in (("balanced_accuracy", "balanced accuracy, raw argmax"), ("accuracy", "accuracy, raw argmax"),
                           ("macro_f1", "macro F1, raw argmax")):
            lines.append(f"| {label} | {format_value(raw.get(key))} | {format_interval(ci_of(raw_ci, key))} |")
    flag = test.get("melanoma_flag")
    if flag:
        lines.append(f"| melanoma flag: sensitivity / specificity (target {format_value(flag.get('target_specificity'))}) "
                     f"| {format_value(flag.get('sensitivity'))} / {format_value(flag.get('specificity'))} | |")
    lines += ["", "| class | images | sensitivity (recall) | 95% CI | specificity | precision | F1 | AUC |",
              "|---|---|---|---|---|---|---|---|"]
    for code, stats in test.get("per_class", {}).items():
        lines.append(f"| {code} ({class_name(code)}) | {stats.get('support')} | {format_value(stats.get('recall'))} | "
                     f"{format_interval(ci_of(ci, f'recall_{code}'))} | {format_value(stats.get('specificity'))} | "
                     f"{format_value(stats.get('precision'))} | {format_value(stats.get('f1'))} | "
                     f"{format_value(stats.get('auc'))} |")
    return lines + ["", "n/a: not defined on this test split (a class without images, or never predicted)."]


def _ensemble(config: dict) -> dict | None:
    return config.get("ensemble") or None


def _model_name(config: dict) -> str:
    meta = {"model_config": config["architecture"], "ensemble": config.get("ensemble"),
            "distilled_from": config.get("distilled_from")}
    return f"{model_name(meta)}, {config['preprocessing']['image_size']} px"


def _class_sentence(classes: list[str]) -> str:
    if sorted(classes) == sorted(HAM10000_CODES):
        return "the seven HAM10000 classes"
    return f"{len(classes)} classes ({', '.join(classes)})"


def _weights_line(config: dict, training: dict) -> str:
    ensemble = _ensemble(config)
    monitor = training.get("monitor")
    chosen = (f"the checkpoint of epoch {training.get('epoch')}, chosen on `{monitor}`" if monitor
              else "the weights at the end of training (no checkpoint chosen on a validation metric)")
    if ensemble:   # each member has its own epoch: the package's top-level one is the first member's
        epochs = ensemble.get("member_epochs")
        listed = f" (epochs {', '.join(map(str, epochs))})" if epochs else ""
        chosen = (f"each member: the checkpoint of its best epoch on `{monitor}`{listed}" if monitor
                  else f"each member: its weights at the end of training{listed}, no checkpoint chosen on a "
                       "validation metric")
    return (f"- Backbone weights at the start of training: {training.get('backbone_weights_at_start')}; "
            f"{chosen}; trained with dermalens {config.get('dermalens_version')}.")


def _decision_section(config: dict) -> list[str]:
    rule = config.get("decision") or {}
    biases = {code: value for code, value in (rule.get("class_bias") or {}).items() if value}
    point = rule.get("melanoma_operating_point")
    if not biases and not point:
        return ["The class reported is the most probable one (no decision rule was fitted)."]
    lines = []
    if biases:
        lines.append(f"The class reported (by `dermalens predict`, the server and the page) is the argmax of "
                     f"log p + a per-class bias ({rule.get('objective')}; fitted on {rule.get('fitted_on')}): "
                     + ", ".join(f"{code} {value:+.2f}" for code, value in biases.items())
                     + ". It can differ from the most probable class; the probabilities are unchanged.")
    else:
        lines.append("The class reported is the most probable one (no class biases).")
    if point:
        reached = point.get("sensitivity")
        lines.append(f"Melanoma flag: raised when P(mel) >= {point['threshold']:.3f}, the operating point for "
                     f"{point['specificity']:.0%} specificity on {point.get('fitted_on')}"
                     + (f" (melanoma sensitivity {reached:.2f} there)." if reached is not None else "."))
    return lines


def render_model_card(config: dict, folder_name: str) -> str:
    """MODEL_CARD.md (with the Hub's YAML header, so it can serve as the repository's README)."""
    arch, pre, training = config["architecture"], config["preprocessing"], config["training"]
    test = config.get("test_metrics") or {}
    synthetic = training.get("synthetic_data")
    ensemble = _ensemble(config)
    name = _model_name(config)
    fitted_on = config.get("calibration_fitted_on")
    split_method = training.get("split_method") or ""
    ham_derived = training.get("dataset") in ("ham10000", "isic2018", "dermamnist")
    lines = [
        "---",
        f"license: {training['hub_licence']}",
        "library_name: dermalens",
        "pipeline_tag: image-classification",
        f"tags: [dermoscopy, skin-lesion, {'ham10000, ' if ham_derived else ''}research-only]",
        "---",
        f"# dermalens lesion classifier: {name}",
        "",
        f"> **{RESEARCH_DISCLAIMER}**",
        "",
    ]
    if synthetic:
        lines += ["> **WARNING: trained on GENERATED images, NOT REAL lesions. Its numbers mean nothing; it exists "
                  "to show the pipeline end to end.**", ""]
    lines += [
        "## Intended use",
        "",
        f"Research on the classification of dermoscopy images into {_class_sentence(config['classes'])}: comparing "
        "models, studying errors, calibration and explanations. It is not a medical device and not a diagnosis: do "
        "not use it to diagnose, screen, triage or reassure anyone, or for any clinical decision.",
        "",
        "## Model",
        "",
        f"- Architecture: `{arch['backbone']}` (timm){' with CBAM attention on the last feature map' if arch.get('cbam') else ''}, "
        f"global average pooling, dropout {arch.get('drop_rate')}, a {len(config['classes'])}-way linear head"
        + (f"; {ensemble['members']} such models (the fold models of a lesion-grouped cross-validation) answer as "
           f"one: the mean of their logits"
           + (f", the first {ensemble['shared_trunk_stages']} frozen stages computed once for all"
              if ensemble.get("shared_trunk_stages") else "") + "." if ensemble else "."),
        f"- Input: RGB {pre['image_size']}x{pre['image_size']}, the image made square by `{pre['geometry']}`, "
        f"scaled to [0, 1] and normalised with mean {pre['mean']} and std {pre['std']} (`config.json`, "
        f"`preprocessing`).",
        _weights_line(config, training),
        "- Classes, in output order:",
        "",
        "| index | code | name |",
        "|---|---|---|",
        *(f"| {index} | {code} | {class_name(code)} |" for index, code in enumerate(config["classes"])),
        "",
        "## Training data and licence",
        "",
        f"- Data: {training['data']}.",
        f"- Licence: {training['data_licence']}",
        "",
        "## Split",
        "",
        f"- {split_method or 'not recorded (no test evaluation)'}; about "
        f"{_share(training.get('val_fraction'))} of the data for validation and "
        f"{_share(training.get('test_fraction'))} for test (seed {training.get('seed')}).",
        *(["- Images of one lesion are never in two splits (HAM10000 has several photos of many lesions)."]
          if split_method.startswith("grouped by lesion_id") else []),
        f"- The temperature and the decision rule were fitted on {fitted_on or 'nothing (none was fitted)'}; the "
        "test split was used once, for the figures below.",
        "",
        "## Metrics",
        "",
        *_metrics_section(config),
        "",
        "## Decision rule",
        "",
        *_decision_section(config),
        "",
        "## Calibration",
        "",
    ]
    if fitted_on:
        lines.append(f"Temperature T = {config['temperature']:.3f}, fitted on {fitted_on} "
                     f"{'with' if config['tta'] else 'without'} flip test-time augmentation: probabilities are "
                     + ("softmax(mean of the four flipped views' logits / T)." if config['tta'] else "softmax(logits / T)."))
    else:
        lines.append("No temperature was fitted (T = 1): the probabilities are the raw softmax.")
    if test.get("ece") is not None:
        before = test.get("ece_before_temperature")
        lines.append(f"Expected calibration error on the test split: "
                     f"{format_metric_ci(test['ece'], ci_of(test.get('ci95'), 'ece'))}, {test.get('ece_bins')} bins"
                     + (f"; {format_value(before)} before temperature scaling." if before is not None else "."))
    lines += [
        "",
        "## Limitations",
        "",
        "- Dermoscopy images only. Clinical (non-dermoscopic) photos, histology or other devices are outside what "
        "it has seen; it gives an answer for them anyway.",
        f"- {len(config['classes'])} classes only ({', '.join(config['classes'])}): no squamous cell carcinoma, no "
        "'other' or 'not a lesion' class. Every image is put in one of these classes, whatever it shows.",
    ]
    if ham_derived or synthetic:
        lines += [
            "- HAM10000 comes from two centres (the ViDIR group of the Medical University of Vienna, Austria, and a "
            "skin cancer practice in Queensland, Australia) and shows mostly lighter skin types; performance on "
            "darker skin, other populations, other dermatoscopes and other clinics is unknown.",
            "- The classes are very unequal (about two thirds are nevi; dermatofibroma and vascular lesions are about "
            "1% each): per-class numbers of the rare classes rest on few images, as their intervals show.",
        ]
    else:
        lines.append("- Who and what the training images show (skin types, centres, devices) is not known to "
                     "dermalens: judge it from the data set itself.")
    lines += [
        f"- Probabilities are calibrated on {fitted_on or 'nothing'} (the training data's own images); on other "
        "data they may be over- or under-confident.",
        "",
        "## How to use",
        "",
        "With dermalens installed:",
        "",
        "```bash",
        f"(cd {folder_name} && sha256sum -c SHA256SUMS)   # nothing changed since packaging",
        f"dermalens predict --model {folder_name} lesion.jpg            # ONNX Runtime (model.onnx)",
        f"dermalens predict --model {folder_name} --runtime pytorch lesion.jpg -f json",
        f"dermalens explain --model {folder_name} lesion.jpg            # Grad-CAM overlay",
        f"dermalens serve --model {folder_name}                         # web page and JSON API",
        "```",
        "",
        "```python",
        "from dermalens.inference.load import load_predictor",
        f'predictor = load_predictor("{folder_name}")      # or runtime="pytorch"',
        'print(predictor.predict(["lesion.jpg"])[0].top_k(3))',
        "```",
        "",
        "Loading checks `SHA256SUMS` first and never unpickles anything: `config.json` is JSON and "
        "`model.safetensors` holds tensors only.",
        "",
        "## Files",
        "",
        "- `config.json`: architecture, preprocessing, classes, temperature and TTA, validation and test metrics, "
        "provenance",
        "- `model.safetensors`: the weights (PyTorch state_dict of dermalens' `LesionClassifier`)",
    ]
    if config.get("onnx"):
        parity = config["onnx"].get("parity") or {}
        lines.append(f"- `model.onnx`: the same model for ONNX Runtime (opset {config['onnx'].get('opset')}; "
                     f"outputs logits and probabilities at T); its probabilities were within "
                     f"{parity.get('max_abs_diff', float('nan')):.1e} of PyTorch's on {parity.get('n_images')} "
                     f"images when packaged")
    lines += ["- `MODEL_CARD.md`: this card", "- `SHA256SUMS`: the sha256 of every other file", "",
              f"_{RESEARCH_DISCLAIMER}_", ""]
    return "\n".join(lines)
