"""Downstream evaluation methods: metrics, kNN, linear probe, fine-tune, splits.

Plain NumPy / scikit-learn / PyTorch; the Ray Tune wiring lives in ``grid.py``.

Shapes and units:

- embeddings: ``(N, D)`` float, one row per chip, from a frozen encoder's ``embed``;
- chips for fine-tuning: ``(N, C, H, W)`` float, already normalised the way the encoder
  was pretrained (this module does not normalise pixels);
- labels: ``(N,)`` class labels (any hashable values, usually ints) for classification,
  floats for regression.

Every method returns predictions in the label space it was given, so
:func:`metrics` can score them directly.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, r2_score
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

TASK_TYPES = ("classification", "regression")

#: Default regularisation grids searched on the validation split (log-spaced).
#: Logistic regression: inverse strength ``C``; ridge: strength ``alpha``.
DEFAULT_C_GRID: tuple[float, ...] = tuple(np.logspace(-4, 4, 9))
DEFAULT_ALPHA_GRID: tuple[float, ...] = tuple(np.logspace(-3, 5, 9))


def _check_task_type(task_type: str) -> str:
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    return task_type


# --------------------------------------------------------------------------- metrics


def metrics(y_true, y_pred, task_type: str) -> dict[str, float]:
    """Score predictions.

    Returns ``accuracy``, ``macro_f1`` (classification; NaN for regression), ``r2``
    (regression; NaN for classification) and ``score``: the headline number, accuracy for
    classification and R² for regression. Macro-F1 averages over the classes present in
    ``y_true`` or ``y_pred``.
    """
    _check_task_type(task_type)
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    nan = float("nan")
    if len(y_true) == 0:
        return {"accuracy": nan, "macro_f1": nan, "r2": nan, "score": nan}
    if task_type == "classification":
        acc = float(accuracy_score(y_true, y_pred))
        f1 = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
        return {"accuracy": acc, "macro_f1": f1, "r2": nan, "score": acc}
    y_true = y_true.astype(np.float64)
    y_pred = y_pred.astype(np.float64)
    r2 = float(r2_score(y_true, y_pred)) if len(y_true) > 1 else nan
    return {"accuracy": nan, "macro_f1": nan, "r2": r2, "score": r2}


# --------------------------------------------------------------------------- kNN


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def knn(train_emb, train_y, test_emb, k: int, task_type: str, weighted: bool = True,
        chunk_size: int = 1024) -> np.ndarray:
    """k-nearest-neighbour prediction with cosine similarity.

    Embeddings are L2-normalised, so the dot product is the cosine similarity. Each test
    chip takes its ``k`` most similar training chips (``k`` is clipped to ``n_train``) and
    predicts their similarity-weighted majority class (classification; ties go to the
    class that sorts first) or their similarity-weighted mean (regression). Weights are
    ``max(similarity, 0) + 1e-6``: dissimilar neighbours count (almost) nothing, and a
    test chip whose neighbours are all orthogonal falls back to the unweighted vote.
    ``weighted=False`` gives every neighbour weight 1.

    Similarities are computed ``chunk_size`` test rows at a time, so memory stays
    ``O(chunk_size × n_train)``.
    """
    _check_task_type(task_type)
    train = _l2_normalise(train_emb)
    test = _l2_normalise(test_emb)
    train_y = np.asarray(train_y)
    if train.shape[0] != train_y.shape[0]:
        raise ValueError(f"train_emb has {train.shape[0]} rows but train_y has {train_y.shape[0]}")
    if train.shape[0] == 0:
        raise ValueError("knn needs at least one training embedding")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train_emb has {train.shape[1]} dims but test_emb has {test.shape[1]}")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    k = min(int(k), train.shape[0])

    if task_type == "classification":
        classes, codes = np.unique(train_y, return_inverse=True)
    else:
        targets = train_y.astype(np.float64)

    out = []
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start:start + chunk_size] @ train.T  # (b, n_train)
        if k < train.shape[0]:
            nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        else:
            nn = np.broadcast_to(np.arange(k), sim.shape).copy()
        nn_sim = np.take_along_axis(sim, nn, axis=1).astype(np.float64)
        w = np.clip(nn_sim, 0.0, None) + 1e-6 if weighted else np.ones_like(nn_sim)
        if task_type == "classification":
            votes = np.zeros((sim.shape[0], len(classes)))
            rows = np.repeat(np.arange(sim.shape[0]), k)
            np.add.at(votes, (rows, codes[nn].ravel()), w.ravel())
            out.append(classes[votes.argmax(axis=1)])
        else:
            out.append((w * targets[nn]).sum(axis=1) / w.sum(axis=1))
    if not out:
        return np.empty(0, dtype=train_y.dtype if task_type == "classification" else np.float64)
    return np.concatenate(out)


# --------------------------------------------------------------------------- linear probe


def linear_probe(train_emb, train_y, val_emb, val_y, test_emb, task_type: str, seed: int = 0,
                 grid: Sequence[float] | None = None, max_iter: int = 1000) -> tuple[np.ndarray, float]:
    """Linear probe on frozen embeddings; returns ``(test predictions, chosen regularisation)``.

    Features are standardised with mean and std fitted on the training split. For
    classification, multinomial logistic regression (lbfgs) over a grid of ``C`` (default
    :data:`DEFAULT_C_GRID`); for regression, ridge over a grid of ``alpha`` (default
    :data:`DEFAULT_ALPHA_GRID`). Each grid value is fitted on the training split and scored
    on the validation split (accuracy or R²); the best one is kept, and that model, fitted
    on the training split only, predicts the test split. Ties go to the first value in grid
    order; for logistic regression the grid is searched in increasing ``C`` with warm starts
    (several times faster), so ties go to the strongest regularisation. With an empty
    validation split the grid's middle value is used.
    """
    _check_task_type(task_type)
    train_y = np.asarray(train_y)
    val_y = np.asarray(val_y)
    scaler = StandardScaler().fit(np.asarray(train_emb, dtype=np.float64))
    x_train = scaler.transform(np.asarray(train_emb, dtype=np.float64))
    x_val = scaler.transform(np.asarray(val_emb, dtype=np.float64)) if len(val_emb) else None
    x_test = scaler.transform(np.asarray(test_emb, dtype=np.float64))
    if grid is None:
        grid = DEFAULT_C_GRID if task_type == "classification" else DEFAULT_ALPHA_GRID
    grid = [float(g) for g in grid]
    if not grid:
        raise ValueError("linear_probe grid must hold at least one value")

    if task_type == "classification" and len(np.unique(train_y)) < 2:
        # lbfgs cannot fit one class; the only sensible answer is that class.
        log.warning("linear probe: training split has a single class %r; predicting it", train_y[0])
        return np.full(len(x_test), train_y[0], dtype=train_y.dtype), float("nan")

    if task_type == "classification":
        # Increasing C with warm starts: each fit starts from the more regularised solution,
        # which cuts lbfgs iterations several-fold; ties then go to the strongest regularisation.
        grid = sorted(grid)
        warm = LogisticRegression(solver="lbfgs", max_iter=max_iter, random_state=seed, warm_start=True)

    def fit(reg: float):
        if task_type == "classification":
            warm.set_params(C=reg)
            model = warm
        else:
            model = Ridge(alpha=reg, random_state=seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x_train, train_y if task_type == "classification" else train_y.astype(np.float64))
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.debug("linear probe: lbfgs did not converge in %d iterations at reg=%g", max_iter, reg)
        return model

    if x_val is None or len(x_val) == 0:
        reg = grid[len(grid) // 2]
        log.warning("linear probe: empty validation split; using reg=%g without search", reg)
        return fit(reg).predict(x_test), reg

    best = None
    for reg in grid:
        model = fit(reg)
        score = metrics(val_y, model.predict(x_val), task_type)["score"]
        log.debug("linear probe: reg=%g val score=%.4f", reg, score)
        if best is None or (np.isfinite(score) and (not np.isfinite(best[0]) or score > best[0])):
            best = (score, reg, copy.deepcopy(model))
    _, reg, model = best
    return model.predict(x_test), reg


# --------------------------------------------------------------------------- fine-tune


class _Classifier(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, dim: int, n_out: int):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.embed(x))


_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _param_groups(model: _Classifier, lr: float, weight_decay: float,
                  layer_decay: float | None) -> list[dict]:
    """AdamW groups: no weight decay on 1-D parameters (norms, biases); optional layer decay.

    Layer-wise lr decay (as in MAE/SatMAE fine-tuning) needs an encoder whose transformer
    blocks are named ``blocks.<i>.``: block ``i`` gets ``lr · decay^(L − i)``, parameters
    before the blocks (patch / position embeddings, tokens) ``lr · decay^(L + 1)`` and
    everything after them (final norm, head) the full ``lr``.
    """
    names = [n for n, p in model.encoder.named_parameters() if p.requires_grad]
    block_ids = [int(m.group(1)) for n in names if (m := _BLOCK_RE.search(n))]
    n_layers = max(block_ids) + 1 if block_ids else 0
    if layer_decay is not None and not block_ids:
        log.warning("finetune: layer_decay=%g ignored; the encoder has no 'blocks.<i>.' parameters", layer_decay)
        layer_decay = None

    def layer_of(name: str) -> int:
        if name.startswith("head."):
            return n_layers + 1
        m = _BLOCK_RE.search(name)
        if m:
            return int(m.group(1)) + 1
        # Parameters named before the first block in registration order are the stem.
        return 0 if name in stem else n_layers + 1

    stem: set[str] = set()
    for n, _ in model.encoder.named_parameters():
        if _BLOCK_RE.search(n):
            break
        stem.add("encoder." + n)

    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_of(name) if layer_decay is not None else 0
        decay = p.ndim >= 2
        scale = layer_decay ** (n_layers + 1 - layer) if layer_decay is not None else 1.0
        g = groups.setdefault((layer, decay), {"params": [], "lr": lr * scale,
                                               "weight_decay": weight_decay if decay else 0.0})
        g["params"].append(p)
    return list(groups.values())


def _encode_labels(train_y, val_y, task_type: str, n_classes: int | None):
    """Map labels to what the loss needs; returns (train_t, val_t, decode)."""
    train_y = np.asarray(train_y)
    val_y = np.asarray(val_y)
    if task_type == "regression":
        mean = float(train_y.astype(np.float64).mean())
        std = float(train_y.astype(np.float64).std()) or 1.0
        enc = lambda y: torch.as_tensor((np.asarray(y, dtype=np.float64) - mean) / std, dtype=torch.float32)  # noqa: E731
        return enc(train_y), enc(val_y), (lambda out: out * std + mean), 1
    both = np.concatenate([train_y, val_y])
    if np.issubdtype(both.dtype, np.integer) and both.min(initial=0) >= 0 and n_classes and both.max(initial=0) < n_classes:
        return (torch.as_tensor(train_y, dtype=torch.long), torch.as_tensor(val_y, dtype=torch.long),
                (lambda idx: idx), int(n_classes))
    classes = np.unique(both)
    n_out = max(int(n_classes or 0), len(classes))
    enc = lambda y: torch.as_tensor(np.searchsorted(classes, y), dtype=torch.long)  # noqa: E731

    def decode(idx):
        return classes[np.clip(idx, 0, len(classes) - 1)]

    return enc(train_y), enc(val_y), decode, n_out


def finetune(encoder: torch.nn.Module, train_x, train_y, val_x, val_y, test_x, task_type: str,
             n_classes: int | None, epochs: int = 2, lr: float = 1e-4, batch_size: int = 32,
             layer_decay: float | None = None, device: str | torch.device = "cpu", seed: int = 0,
             autocast_dtype: torch.dtype | None = None, weight_decay: float = 0.05) -> np.ndarray:
    """Fine-tune ``encoder`` end to end with a linear head; return test predictions.

    ``encoder`` must have ``embed(x: (B, C, H, W) float) -> (B, D)``; it is deep-copied, so
    the caller's module is left untouched. The head is ``Linear(D, n_classes)``
    (classification, cross-entropy) or ``Linear(D, 1)`` (regression, MSE on targets
    standardised with the training mean and std; predictions are de-standardised). AdamW
    (``weight_decay`` on weights, none on norms and biases; optional layer-wise ``layer_decay``,
    see :func:`_param_groups`) at a constant ``lr``. After each epoch the validation split is
    scored (accuracy or R²) and the weights of the best epoch (the first on ties) predict the
    test split; with an empty validation split the last epoch is used. ``autocast_dtype``
    (e.g. ``torch.bfloat16``) enables mixed precision on ``device``.

    Shuffling, head initialisation and dropout draw from RNGs seeded with ``seed`` inside
    :func:`torch.random.fork_rng`, so runs on CPU are repeatable and the global RNG state is
    left as it was.
    """
    _check_task_type(task_type)
    if task_type == "classification" and not n_classes:
        raise ValueError("finetune: n_classes is required for classification")
    device = torch.device(device)
    train_x = torch.as_tensor(np.asarray(train_x), dtype=torch.float32)
    val_x = torch.as_tensor(np.asarray(val_x), dtype=torch.float32)
    test_x = torch.as_tensor(np.asarray(test_x), dtype=torch.float32)
    if len(train_x) != len(train_y):
        raise ValueError(f"train_x has {len(train_x)} chips but train_y has {len(train_y)} labels")
    train_t, val_t, decode, n_out = _encode_labels(train_y, val_y, task_type, n_classes)
    val_y = np.asarray(val_y)

    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        encoder = copy.deepcopy(encoder).to(device)
        encoder.eval()
        with torch.no_grad():
            dim = int(encoder.embed(train_x[:1].to(device)).shape[-1])
        model = _Classifier(encoder, dim, n_out).to(device)
        opt = torch.optim.AdamW(_param_groups(model, lr, weight_decay, layer_decay), lr=lr, betas=(0.9, 0.999))
        loss_fn = torch.nn.CrossEntropyLoss() if task_type == "classification" else torch.nn.MSELoss()
        gen = torch.Generator().manual_seed(seed)

        def autocast():
            return torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.bfloat16,
                                  enabled=autocast_dtype is not None)

        @torch.no_grad()
        def predict(x: torch.Tensor) -> np.ndarray:
            model.eval()
            outs = []
            for i in range(0, len(x), batch_size):
                with autocast():
                    out = model(x[i:i + batch_size].to(device, non_blocking=True))
                outs.append(out.float().cpu())
            if not outs:
                return np.empty(0)
            out = torch.cat(outs)
            if task_type == "classification":
                return decode(out.argmax(dim=1).numpy())
            return decode(out[:, 0].double().numpy())

        best_score, best_state = -np.inf, None
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train_x), generator=gen)
            total, seen = 0.0, 0
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                xb = train_x[idx].to(device, non_blocking=True)
                yb = train_t[idx].to(device, non_blocking=True)
                with autocast():
                    out = model(xb)
                out = out.float()
                loss = loss_fn(out if task_type == "classification" else out[:, 0], yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            if len(val_x):
                score = metrics(val_y, predict(val_x), task_type)["score"]
            else:
                score = float(epoch)  # no validation: the last epoch wins
            log.info("finetune epoch %d/%d: train loss %.4f, val score %.4f",
                     epoch + 1, epochs, total / max(seen, 1), score)
            if np.isfinite(score) and score > best_score:
                best_score = score
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if best_state is not None:
            model.load_state_dict(best_state)
        return predict(test_x)


# --------------------------------------------------------------------------- splits


def split_indices(n: int, labels=None, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                  seed: int = 0) -> np.ndarray:
    """Assign each of ``n`` items to ``"train"``, ``"val"`` or ``"test"``; deterministic in ``seed``.

    Without ``labels`` (regression) the items are shuffled and cut by ``fractions``
    (rounded; the remainder goes to test). With ``labels`` (classification) the cut is made
    per class: a class with ``m ≥ 3`` members puts ``max(1, round(m·f))`` into val and test
    each and the rest (at least one) into train, so every such class appears in every split;
    classes with one or two members go to train only.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test), got {fractions}")
    total = float(sum(fractions))
    f_train, f_val, f_test = (f / total for f in fractions)
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype="<U5")
    if labels is None:
        perm = rng.permutation(n)
        n_train = int(round(n * f_train))
        n_val = min(int(round(n * f_val)), n - n_train)
        out[perm[:n_train]] = "train"
        out[perm[n_train:n_train + n_val]] = "val"
        out[perm[n_train + n_val:]] = "test"
        return out

    labels = np.asarray(labels)
    if len(labels) != n:
        raise ValueError(f"split_indices: n={n} but {len(labels)} labels were given")
    _, codes = np.unique(labels, return_inverse=True)
    for c in range(codes.max(initial=-1) + 1):
        members = rng.permutation(np.flatnonzero(codes == c))
        m = len(members)
        if m < 3:
            out[members] = "train"
            continue
        n_val = max(1, int(round(m * f_val))) if f_val > 0 else 0
        n_test = max(1, int(round(m * f_test))) if f_test > 0 else 0
        while m - n_val - n_test < 1:  # keep at least one training example
            if n_val >= n_test and n_val > 1:
                n_val -= 1
            elif n_test > 1:
                n_test -= 1
            else:
                break
        out[members[:n_val]] = "val"
        out[members[n_val:n_val + n_test]] = "test"
        out[members[n_val + n_test:]] = "train"
    return out
