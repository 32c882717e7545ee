"""The head's checkpoints: which epochs keep predictions, and the callback that keeps them."""

import keras
import numpy as np

from dogscats.data.feature_store import SplitFeatures
from dogscats.models.head import EpochPredictions, checkpoint_epochs, fit_head, predict_proba


def test_checkpoints_are_about_ten_evenly_spaced_epochs_with_the_last():
    assert checkpoint_epochs(100) == list(range(10, 101, 10))
    assert checkpoint_epochs(5) == [1, 2, 3, 4, 5]
    assert checkpoint_epochs(25) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25]


def test_epoch_predictions_keep_each_checkpoints_probabilities_and_weights():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype("float32")
    y = (x[:, 0] > 0).astype(int)
    rows = SplitFeatures([str(i) for i in range(40)], x, y, np.ones(40, bool))
    recorder = EpochPredictions([x[:5]], [1, 3])
    model, _ = fit_head(rows, None, 2, 0, 0.0, "adam", 0.05, 3, 8, [recorder])
    assert sorted(recorder.predictions) == [1, 3] == sorted(recorder.weights)  # epochs counted from 1
    np.testing.assert_allclose(recorder.predictions[3][0], predict_proba(model, x[:5]), atol=1e-6)  # the last epoch
    assert not np.allclose(recorder.predictions[1][0], recorder.predictions[3][0])  # two epochs apart: it learned
    model.set_weights(recorder.weights[1])
    np.testing.assert_allclose(predict_proba(model, x[:5]), recorder.predictions[1][0], atol=1e-6)
