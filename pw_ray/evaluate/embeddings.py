"""Frozen-encoder embeddings, computed once per (checkpoint, task) and cached on storage.

``runs/embeddings/<set>/<task>.parquet``: ``chip_id`` and ``embedding`` (fixed-size list of
float32: the encoder's patch tokens pooled as ``evaluation.pooling`` says, on chips normalised
exactly as in pretraining, its uint8 quantisation included). kNN and linear-probe cells read
these instead of running the encoder again.

``evaluation.pooling``: ``mean_then_norm`` (default) is SatMAE's fine-tuning head
(``models_vit_group_channels.py``, ``global_pool``, on by default in its ``main_finetune.py``):
the mean of the last block's patch tokens, then a fresh LayerNorm ``fc_norm``, which at its
initial weights standardises each vector. A linear probe on it is SatMAE's head with the blocks
frozen (a trained ``fc_norm`` affine is absorbed by the linear layer), the evaluation the
paper's code path implies. ``norm_then_mean`` applies the encoder's pretrained final norm to
each token and then averages (MAE-style features, pw-ray's earlier default).

The cache is keyed by what made it, not by the set's name: the file's lineage records the digest
of the ``encoder.pt`` it was computed with, the task's digest (its chips and labels) and the
pooling, so a re-exported encoder, a re-ingested task or another pooling makes the entry stale
and it is recomputed instead of silently reused (``pw_ray.encoder_sha256`` in the schema
metadata names the checkpoint).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pyarrow as pa

from pw_ray import storage
from pw_ray.ingest import shards as S

log = logging.getLogger(__name__)


def embeddings_uri(root: str, set_name: str, task: str) -> str:
    return storage.join(root, "runs", "embeddings", set_name, f"{task}.parquet")


def normalised(pixels: np.ndarray, mean, std, quantize: str = "none"):
    """uint16 (N, C, H, W) → float32 tensor in [0, 1] with the pretraining normalisation.

    ``quantize``: the export's ``normalization["quantize"]`` (``uint8`` or ``none``; see
    :func:`input_quantization`).
    """
    import torch

    from pw_ray.pretrain.transforms import normalize

    return normalize(torch.from_numpy(pixels.astype(np.float32)), mean, std, quantize=quantize)


def input_quantization(conf: dict) -> str:
    """The quantisation an exported encoder was trained with (``none`` for exports that predate it)."""
    return conf.get("normalization", {}).get("quantize", "none")


def embed_pixels(encoder, pixels: np.ndarray, mean, std, batch_size: int = 64, device: str = "cpu",
                 quantize: str = "none") -> np.ndarray:
    """Embeddings (N, D) float32 of uint16 chips (N, C, H, W)."""
    import torch

    encoder = encoder.to(device).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch_size):
            x = normalised(pixels[i:i + batch_size], mean, std, quantize).to(device)
            out.append(encoder.embed(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


DIGEST_KEY = b"pw_ray.encoder_sha256"
#: What ``evaluation.pooling`` defaults to (and what the standalone loader does without one).
DEFAULT_POOLING = "mean_then_norm"


def encoder_digest(root: str, set_name: str) -> str:
    """sha256 (hex, 16 chars) of a set's exported ``encoder.pt``: the checkpoint's identity."""
    from pw_ray.pretrain.trainer import export_dir

    data = storage.read_bytes(storage.join(export_dir(root, set_name), "encoder.pt"))
    return hashlib.sha256(data).hexdigest()[:16]


def cached_digest(root: str, set_name: str, task: str) -> str | None:
    """The encoder digest a cache entry was computed with (None: no entry, or written before digests)."""
    uri = embeddings_uri(root, set_name, task)
    if not storage.exists(uri):
        return None
    md = storage.read_table(uri, columns=["chip_id"]).schema.metadata or {}
    return md.get(DIGEST_KEY, b"").decode() or None


def embed_task(root: str, set_name: str, task: str, batch_size: int = 64,
               pooling: str = DEFAULT_POOLING) -> tuple[np.ndarray, np.ndarray]:
    """(chip_ids (N,), embeddings (N, D) float32) of every chip of a task, computed now (no cache)."""
    import torch

    from pw_ray.pretrain.trainer import load_encoder

    encoder, conf = load_encoder(root, set_name, pooling)
    table = S.read_set(root, task, columns=["chip_id", "pixels"])
    bands = S.shard_bands(table)
    if bands != conf["bands"]:
        raise ValueError(f"task {task} chips have bands {bands}, encoder {set_name} expects {conf['bands']}")
    pixels = S.read_pixels(table)
    mean = torch.tensor(conf["mean"], dtype=torch.float32)
    std = torch.tensor(conf["std"], dtype=torch.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    emb = embed_pixels(encoder, pixels, mean, std, batch_size, device, quantize=input_quantization(conf))
    return table.column("chip_id").to_numpy(zero_copy_only=False), emb


def embeddings_record(root: str, set_name: str, task: str, pooling: str = DEFAULT_POOLING) -> dict:
    """The lineage of a cache entry: the checkpoint (``encoder.pt``'s digest), the task's chips
    and labels (:func:`pw_ray.evaluate.tasks.task_digest`) and the pooling."""
    from pw_ray import lineage
    from pw_ray.evaluate.tasks import task_digest

    return lineage.record({"encoder_sha256": encoder_digest(root, set_name), "task": task_digest(root, task),
                           "pooling": pooling})


def compute_embeddings(root: str, set_name: str, task: str, batch_size: int = 64,
                       pooling: str = DEFAULT_POOLING) -> str:
    """Embed every chip of a task with one set's encoder, unless the cache holds exactly these.

    Returns the cache URI. An entry computed with another ``encoder.pt``, for other task chips
    (a re-ingested task) or with another pooling, or written before lineage existed, is
    recomputed and replaced atomically.
    """
    from pw_ray import lineage

    uri = embeddings_uri(root, set_name, task)
    rec = embeddings_record(root, set_name, task, pooling)
    why = lineage.why_redo(lineage.of_parquet(uri), rec)
    if why is None:
        return uri
    if storage.exists(uri):
        log.info("embeddings %s/%s: %s → recomputing", set_name, task, why)
    digest = rec["inputs"]["encoder_sha256"]
    ids, emb = embed_task(root, set_name, task, batch_size, pooling)
    out = pa.table({
        "chip_id": pa.array(ids, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]),
    }).replace_schema_metadata({DIGEST_KEY: digest.encode()})
    storage.write_table(lineage.attach(out, rec), uri)
    log.info("embedded %d chips of %s with %s (encoder %s, pooling %s) → %s", len(emb), task, set_name, digest,
             pooling, uri)
    return uri


def read_embeddings(root: str, set_name: str, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(chip_ids (N,), embeddings (N, D) float32) from the cache."""
    t = storage.read_table(embeddings_uri(root, set_name, task))
    col = t.column("embedding").combine_chunks()
    emb = col.values.to_numpy(zero_copy_only=False).reshape(len(t), -1)
    return t.column("chip_id").to_numpy(zero_copy_only=False), emb
