"""dermalens: train, evaluate, explain and serve skin-lesion classifiers.

A research tool, not a diagnosis.
"""
__version__ = "0.1.0"
