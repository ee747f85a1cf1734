"""Evaluation: metrics with bootstrap CIs (metrics), temperature scaling
(calibration), figures (plots) and the written report (report).

Submodules are imported explicitly (e.g. `from dermalens.evaluation.metrics
import compute_classification_metrics`) so that computing metrics never pulls
in matplotlib.
"""
