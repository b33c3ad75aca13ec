"""Load a pw-ray SatMAE encoder export (encoder.pt + config.json) with only torch and timm."""
import json
from functools import partial
from pathlib import Path

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

#: ``mean_then_norm``: SatMAE's fine-tuning head (global_pool): mean of the last block's patch
#: tokens, then a fresh LayerNorm ``fc_norm`` (trainable; at its initial weights a plain
#: standardisation). ``norm_then_mean``: the pretrained final ``norm`` on every token, then the mean.
POOLINGS = ("mean_then_norm", "norm_then_mean")


class SatMAEEncoder(nn.Module):
    def __init__(self, cfg: dict, pooling: str = "mean_then_norm"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")
        d, n = cfg["embed_dim"], (cfg["img_size"] // cfg["patch_size"]) ** 2
        norm = partial(nn.LayerNorm, eps=cfg["norm_eps"])
        self.groups = cfg["group_indices"]
        self.pooling = pooling
        self.patch_embed = nn.ModuleList(
            PatchEmbed(cfg["img_size"], cfg["patch_size"], len(g), d) for g in self.groups)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", torch.zeros(1, n + 1, d - cfg["channel_embed"]))
        self.register_buffer("channel_embed", torch.zeros(1, len(self.groups), cfg["channel_embed"]))
        self.blocks = nn.Sequential(*(Block(d, cfg["num_heads"], cfg["mlp_ratio"], qkv_bias=True,
                                            norm_layer=norm) for _ in range(cfg["depth"])))
        self.norm = norm(d)
        if pooling == "mean_then_norm":
            self.fc_norm = norm(d)  # not in encoder.pt: fresh, as SatMAE's fine-tuning model builds it

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) scaled to [0, 1] as config["normalization"] says → (B, embed_dim).

        Differentiable (fine-tuning); wrap frozen use in ``torch.no_grad()``."""
        t = torch.stack([pe(x[:, g]) for pe, g in zip(self.patch_embed, self.groups)], 1)
        G, L = t.shape[1:3]
        pos = torch.cat([self.pos_embed[:, None, 1:].expand(-1, G, -1, -1),
                         self.channel_embed[:, :, None].expand(-1, -1, L, -1)], -1)
        t = (t + pos).flatten(1, 2)
        t = self.blocks(torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1))
        if self.pooling == "norm_then_mean":
            return self.norm(t)[:, 1:].mean(1)
        return self.fc_norm(t[:, 1:].mean(1))


def load_encoder(path, pooling: str = "mean_then_norm") -> SatMAEEncoder:
    cfg = json.loads((Path(path) / "config.json").read_text())
    model = SatMAEEncoder(cfg, pooling)
    state = torch.load(Path(path) / "encoder.pt", map_location="cpu", weights_only=True)
    fresh = {k: v for k, v in model.state_dict().items() if k.startswith("fc_norm.")}
    model.load_state_dict({**state, **fresh})
    return model.eval()
