"""Downstream methods: metrics, kNN, linear probe, fine-tune, splits."""

import math

import numpy as np
import pytest
import torch

from pw_ray.evaluate import methods as M


def _clusters(n_per_class=30, n_classes=3, dim=8, spread=0.05, seed=0):
    """Well-separated clusters around orthogonal directions; labels are ints."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:n_classes] * 5
    x = np.concatenate([c + rng.normal(0, spread, (n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(n_classes), n_per_class)
    return x.astype(np.float32), y


# --------------------------------------------------------------------------- metrics


def test_classification_metrics_on_known_arrays():
    m = M.metrics([0, 0, 1, 1], [0, 1, 1, 1], "classification")
    assert m["accuracy"] == pytest.approx(0.75)
    # class 0: P=1, R=0.5, F1=2/3; class 1: P=2/3, R=1, F1=0.8
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert math.isnan(m["r2"])
    assert m["score"] == m["accuracy"]


def test_regression_metrics_on_known_arrays():
    m = M.metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], "regression")
    # SS_res = 1, SS_tot = 2
    assert m["r2"] == pytest.approx(0.5)
    assert math.isnan(m["accuracy"]) and math.isnan(m["macro_f1"])
    assert m["score"] == m["r2"]


def test_metrics_reject_unknown_task_type():
    with pytest.raises(ValueError, match="task_type"):
        M.metrics([0], [0], "segmentation")


# --------------------------------------------------------------------------- kNN


def test_knn_classifies_separable_clusters_perfectly():
    x, y = _clusters()
    xt, yt = _clusters(n_per_class=10, seed=1)
    pred = M.knn(x, y, xt, k=5, task_type="classification")
    assert M.metrics(yt, pred, "classification")["accuracy"] == 1.0


def test_knn_keeps_string_labels():
    x, y = _clusters(n_per_class=5)
    names = np.array(["crop", "forest", "water"])[y]
    pred = M.knn(x, names, x[:3], k=3, task_type="classification")
    assert list(pred) == ["crop", "crop", "crop"]


def test_knn_regression_with_k_equal_n_train_is_the_exact_mean():
    x = np.random.default_rng(0).normal(size=(7, 4))
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0])
    pred = M.knn(x, y, x[:2], k=50, task_type="regression", weighted=False)  # k clipped to 7
    assert pred == pytest.approx([y.mean(), y.mean()])


def test_knn_regression_weights_by_similarity():
    train = np.array([[1.0, 0.0], [0.6, 0.8]])  # cosine with the test point: 1.0 and 0.6
    pred = M.knn(train, np.array([0.0, 10.0]), np.array([[2.0, 0.0]]), k=2, task_type="regression")
    w1, w2 = 1.0 + 1e-6, 0.6 + 1e-6
    assert pred[0] == pytest.approx(10.0 * w2 / (w1 + w2))


# --------------------------------------------------------------------------- linear probe


def test_linear_probe_separates_linearly_separable_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    pred, c = M.linear_probe(x[:200], y[:200], x[200:250], y[200:250], x[250:], "classification")
    assert M.metrics(y[250:], pred, "classification")["accuracy"] > 0.95
    assert c in M.DEFAULT_C_GRID


def test_linear_probe_fits_a_line():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, size=(120, 1))
    y = 2 * x[:, 0] + 1
    pred, alpha = M.linear_probe(x[:80], y[:80], x[80:100], y[80:100], x[100:], "regression")
    assert M.metrics(y[100:], pred, "regression")["r2"] > 0.99
    assert alpha == min(M.DEFAULT_ALPHA_GRID)  # no noise: the weakest ridge wins


def test_linear_probe_chooses_the_regularisation_on_validation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] > 0).astype(int)
    _, c = M.linear_probe(x[:100], y[:100], x[100:150], y[100:150], x[150:], "classification",
                          grid=[1e-6, 1.0])
    assert c == 1.0  # C=1e-6 shrinks everything to the prior


# --------------------------------------------------------------------------- fine-tune


class StubEncoder(torch.nn.Module):
    """A tiny encoder with the interface finetune needs: embed((B, C, H, W)) -> (B, D)."""

    def __init__(self, channels=2, dim=4):
        super().__init__()
        self.proj = torch.nn.Linear(channels, dim)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(dim, dim)])

    def embed(self, x):
        h = self.proj(x.mean(dim=(2, 3)))
        return torch.relu(self.blocks[0](h))


def _toy_images(n, seed):
    """Class = which channel is brighter."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 0.1, (n, 2, 4, 4)).astype(np.float32)
    x[np.arange(n), y] += 1.0
    return x, y


def test_finetune_learns_a_toy_problem():
    x, y = _toy_images(160, seed=0)
    torch.manual_seed(0)
    enc = StubEncoder()
    pred = M.finetune(enc, x[:96], y[:96], x[96:128], y[96:128], x[128:], "classification", n_classes=2,
                      epochs=15, lr=3e-2, batch_size=16, seed=0)
    assert M.metrics(y[128:], pred, "classification")["accuracy"] > 0.8  # chance is 0.5


def test_finetune_is_deterministic_and_leaves_the_encoder_untouched():
    x, y = _toy_images(64, seed=1)
    torch.manual_seed(0)
    enc = StubEncoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    kw = dict(epochs=2, lr=1e-2, batch_size=8, seed=3, layer_decay=0.75)
    a = M.finetune(enc, x[:32], y[:32], x[32:48], y[32:48], x[48:], "regression", None, **kw)
    b = M.finetune(enc, x[:32], y[:32], x[32:48], y[32:48], x[48:], "regression", None, **kw)
    np.testing.assert_array_equal(a, b)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


# --------------------------------------------------------------------------- splits


def test_stratified_split_puts_every_class_of_three_or_more_in_every_split():
    labels = np.array([0] * 3 + [1] * 10 + [2] * 50 + [3] * 2)
    split = M.split_indices(len(labels), labels, seed=0)
    for c in (0, 1, 2):
        assert set(split[labels == c]) == {"train", "val", "test"}
    assert set(split[labels == 3]) == {"train"}
    assert (split[labels == 2] == "train").sum() == 30  # 0.6 · 50


def test_split_is_deterministic_in_the_seed():
    labels = np.repeat(np.arange(4), 25)
    a = M.split_indices(100, labels, seed=7)
    assert np.array_equal(a, M.split_indices(100, labels, seed=7))
    assert not np.array_equal(a, M.split_indices(100, labels, seed=8))


def test_unstratified_split_follows_the_fractions():
    split = M.split_indices(100, None, (0.6, 0.2, 0.2), seed=0)
    assert [(split == s).sum() for s in ("train", "val", "test")] == [60, 20, 20]
