"""The MedMNIST-style result file: its name states the figures of the scores it holds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dermalens.evaluation.medmnist import write_medmnist_result

pytestmark = pytest.mark.unit


def test_the_file_name_states_the_accuracy_of_the_scores_written(tmp_path):
    """The name carried the decision rule's accuracy while MedMNIST's evaluator scores the argmax."""
    probs = np.array([[0.6, 0.4], [0.45, 0.55], [0.7, 0.3], [0.2, 0.8]])
    labels = np.array([0, 1, 1, 1])   # argmax right on 3 of 4
    path = write_medmnist_result(tmp_path, "test", 28, probs, labels, auc=0.812, run="demo")
    assert path.name == "dermamnist_test_[AUC]0.812_[ACC]0.750@demo.csv"
    written = pd.read_csv(path, header=None, index_col=0).to_numpy()
    np.testing.assert_allclose(written, probs)
    assert write_medmnist_result(tmp_path, "val", 64, probs, labels, 0.5, "x").name.startswith("dermamnist_64_val_")
