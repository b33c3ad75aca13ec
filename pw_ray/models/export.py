"""Export the pretrained encoder as two plain files that need neither pw-ray nor Ray to load.

``<out_dir>/encoder.pt``   a state dict of tensors (patch embeddings, cls token, the fixed
                           position and group tables, the blocks, the final norm); keys follow
                           SatMAE's names, so a timm ``Block`` stack loads them directly.
``<out_dir>/config.json``  the architecture, the band order and groups, and the normalisation
                           the encoder was trained with.

:mod:`pw_ray.models.standalone_loader` rebuilds the encoder from them with torch and timm only.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pw_ray import bands as B
from pw_ray import storage
from pw_ray.models.satmae import GroupChannelMAE

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.pt"
CONFIG_FILE = "config.json"
FORMAT = "pw-ray-satmae-encoder/1"


def fmow_normalization(bands: Sequence[str]) -> dict[str, Any]:
    """SatMAE's per-band normalisation with fMoW-Sentinel statistics, for ``bands`` in order."""
    names = [B.canonical(b) for b in bands]
    return {
        "method": "clip mean±2std, then (x - (mean - 2std)) / (4std) -> [0, 1]",
        "source": "fmow",
        "mean": [B.FMOW_MEAN[b] for b in names],
        "std": [B.FMOW_STD[b] for b in names],
    }


def export_encoder(model: GroupChannelMAE, out_dir: str | Path, bands: Sequence[str],
                   groups: Sequence[Sequence[str]], extra: dict[str, Any] | None = None) -> Path:
    """Write ``encoder.pt`` and ``config.json`` atomically into ``out_dir``; return ``out_dir``.

    ``bands`` is the model's input channel order and ``groups`` the band-name groups. ``extra``
    is merged into the config (e.g. ``{"pretrain_set": "eu", "step": 1200}``); a
    ``"normalization"`` entry there replaces the fMoW default.
    """
    out = Path(out_dir)
    names = [B.canonical(b) for b in bands]
    if len(names) != model.in_chans:
        raise ValueError(f"{len(names)} bands given for a model with {model.in_chans} input channels")
    config: dict[str, Any] = {
        "format": FORMAT,
        **model.encoder_config(),
        "bands": names,
        "groups": [[B.canonical(b) for b in g] for g in groups],
        "normalization": fmow_normalization(names),
        "embedding": "load_encoder(path, pooling): mean_then_norm (default; SatMAE's fine-tuning head: mean of "
                     "the last block's patch tokens, then a fresh LayerNorm fc_norm) or norm_then_mean (the "
                     "final norm on every patch token, then the mean); the cls token is never pooled",
    }
    config.update(extra or {})

    state = model.encoder_state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    # weights first, config last: a config.json present means the export is complete
    storage.write_bytes(str(out / ENCODER_FILE), buf.getvalue())
    storage.write_text(str(out / CONFIG_FILE), json.dumps(config, indent=2) + "\n")
    log.info("exported encoder (%d tensors) to %s", len(state), out)
    return out
