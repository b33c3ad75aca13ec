"""Encoder export: two plain files that torch + timm alone can load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from pw_ray import bands as B
from pw_ray.models.export import export_encoder
from pw_ray.models.satmae import build_mae

LOADER = Path(__file__).resolve().parents[2] / "pw_ray" / "models" / "standalone_loader.py"

# Runs in a fresh interpreter: loads the loader by file path, embeds, and proves pw_ray was never imported.
_CHILD = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("standalone_loader", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
encoder = mod.load_encoder(sys.argv[2])
x = torch.load(sys.argv[3])
assert encoder.embed(x).requires_grad, "embed must stay differentiable for fine-tuning"
with torch.no_grad():
    torch.save(encoder.embed(x), sys.argv[4])
assert not any(m.split(".")[0] == "pw_ray" for m in sys.modules), "loader imported pw_ray"
"""


def _tiny():
    torch.manual_seed(0)
    return build_mae("tiny", B.SATMAE_BANDS, B.SATMAE_GROUPS).eval()


def test_export_writes_only_encoder_weights_and_a_config(tmp_path):
    out = export_encoder(_tiny(), tmp_path / "export", B.SATMAE_BANDS, B.SATMAE_GROUPS, {"pretrain_set": "eu"})
    state = torch.load(out / "encoder.pt", weights_only=True)
    config = json.loads((out / "config.json").read_text())
    assert sorted(p for p in out.iterdir()) == [out / "config.json", out / "encoder.pt"]
    assert not any(k.startswith(("decoder", "mask_token")) for k in state)
    assert {"cls_token", "pos_embed", "channel_embed", "norm.weight", "blocks.3.attn.qkv.bias"} <= set(state)
    assert config["embed_dim"] == 96 and config["depth"] == 4 and config["num_heads"] == 3
    assert config["bands"] == list(B.SATMAE_BANDS) and config["group_indices"] == [[0, 1, 2, 6], [3, 4, 5, 7], [8, 9]]
    assert config["normalization"]["mean"][0] == B.FMOW_MEAN["B02"]
    assert config["pretrain_set"] == "eu"


def test_standalone_loader_reproduces_embeddings_without_pw_ray(tmp_path):
    model = _tiny()
    export_encoder(model, tmp_path / "export", B.SATMAE_BANDS, B.SATMAE_GROUPS, {})
    x = torch.rand(3, 10, 96, 96, generator=torch.Generator().manual_seed(2))
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", _CHILD, str(LOADER), str(tmp_path / "export"),
                    str(tmp_path / "x.pt"), str(tmp_path / "emb.pt")],
                   check=True, cwd=tmp_path, capture_output=True, timeout=120)
    loaded = torch.load(tmp_path / "emb.pt", weights_only=True)
    assert loaded.shape == (3, 96)
    with torch.no_grad():
        expected = model.embed(x)
    torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=0)


def test_loader_pools_like_the_model_with_either_pooling(tmp_path):
    from pw_ray.models.standalone_loader import POOLINGS, load_encoder

    model = _tiny()
    export_encoder(model, tmp_path / "export", B.SATMAE_BANDS, B.SATMAE_GROUPS, {})
    x = torch.rand(2, 10, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for pooling in POOLINGS:
            encoder = load_encoder(tmp_path / "export", pooling)
            torch.testing.assert_close(encoder.embed(x), model.embed(x, pooling=pooling), atol=1e-5, rtol=0)
    satmae_head = load_encoder(tmp_path / "export").fc_norm  # default: SatMAE's fresh, trainable fc_norm
    assert satmae_head.weight.requires_grad and torch.equal(satmae_head.weight, torch.ones(96))
    assert not hasattr(load_encoder(tmp_path / "export", "norm_then_mean"), "fc_norm")
