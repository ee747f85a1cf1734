"""Explanations: where in the image the classifier's evidence lies.

Grad-CAM, Grad-CAM++ and (gradient-free) Ablation-CAM on the features the head
sees, and SHAP (partition explainer) on the input pixels. `api` is the entry
point (`Explainer`, `explain_image`); `metrics` holds the checks that the maps
mean something. Research tool, not a diagnosis.

Submodules are imported on demand (`from dermalens.explain.api import
Explainer`), so importing dermalens.explain costs nothing.
"""
