from .cbam import CBAM
from .classifier import LesionClassifier, ModelConfig, Preprocessing, create_classifier

__all__ = ["CBAM", "LesionClassifier", "ModelConfig", "Preprocessing", "create_classifier"]
