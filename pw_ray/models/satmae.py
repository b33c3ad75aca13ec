"""SatMAE's group-channel masked autoencoder on timm ``Block``s.

The design follows SatMAE's ``models_mae_group_channels.py`` (Cong et al., 2022); docs/pretrain.md
("Fidelity to SatMAE") lists every point against the official code with its source lines.

* the input bands are split into groups (default RGB+NIR, red edge, SWIR); each group has its
  own patch embedding (a ``patch × patch`` convolution with bias, the bias left at PyTorch's
  default init as in SatMAE), so a 96 px chip with patch 8 becomes ``G × 144`` tokens;
* every token gets a fixed embedding made of a 2-D sin-cos position code
  (``embed_dim − channel_embed`` dims) concatenated with a 1-D sin-cos code of its group
  (``channel_embed`` dims); both tables are buffers, not trained;
* masking keeps SatMAE's count, ``int(N·(1 − mask_ratio))`` tokens of ``N``. Independent
  masking (the default) draws one random permutation over all ``G × L`` tokens of a sample, so
  the number masked *per group* varies and a location can be visible in one group and hidden
  in another; ``spatial_mask=True`` masks the same ``L − int(L·(1 − mask_ratio))`` positions in
  every group;
* the decoder sees all ``G × L`` tokens plus the cls token, with its own fixed position and
  group tables (one extra group row marks the cls token), and one linear head per group
  predicts that group's pixels;
* the loss is the MSE on masked tokens only (optionally on per-patch normalised pixels).

``loss_pairing`` chooses how predictions meet targets:

* ``"official"`` (default; what the paper trained): SatMAE concatenates the groups' predictions
  in *group order* and compares that tensor with the target in *channel order*, then averages
  ``loss[:, group]`` by channel index under that group's mask. With groups that are not listed
  in channel order (the paper's (B2,B3,B4,B8), (B5,B6,B7,B8A), (B11,B12)) some predictions are
  scored against another band. ``norm_pix_loss`` normalises all channels of a patch together.
  It needs groups that cover every input channel once.
* ``"per_group"`` (the corrected variant): each group's prediction is scored against its own
  bands, and ``norm_pix_loss`` normalises each group's patch on its own.

The two are identical exactly when concatenating the groups lists the channels as 0, 1, …, C−1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from pw_ray import bands as B

log = logging.getLogger(__name__)

#: Prefixes of the state-dict entries that make up the encoder.
ENCODER_PREFIXES: tuple[str, ...] = ("patch_embed.", "cls_token", "pos_embed", "channel_embed",
                                     "blocks.", "norm.")
#: LayerNorm epsilon used throughout (MAE's and SatMAE's choice).
NORM_EPS = 1e-6
#: How predictions meet targets in the loss (see the module docstring).
LOSS_PAIRINGS: tuple[str, ...] = ("official", "per_group")
#: How ``embed`` turns patch tokens into one vector per chip.
#: ``mean_then_norm``: SatMAE's fine-tuning head (``global_pool``): the mean of the last block's
#: patch tokens, then a fresh LayerNorm (``fc_norm``; at its initial weights a plain
#: standardisation of the vector). ``norm_then_mean``: the encoder's trained final norm on every
#: token, then the mean.
POOLINGS: tuple[str, ...] = ("mean_then_norm", "norm_then_mean")
DEFAULT_POOLING = "mean_then_norm"


def kept_count(n_tokens: int, mask_ratio: float) -> int:
    """Tokens SatMAE keeps visible out of ``n_tokens``: ``int(n_tokens · (1 − mask_ratio))``.

    The float expression is SatMAE's own, so the count matches it at every ratio (0.6 of 432
    keeps 172, where ``n − round(r·n)`` would keep 173).
    """
    return int(n_tokens * (1 - mask_ratio))


# ---------------------------------------------------------------------------------------------
# fixed sin-cos tables (the MAE layout, so SatMAE checkpoints line up)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) positions → (N, dim) table: ``sin`` in the first half, ``cos`` in the second."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = positions.to(torch.float64).reshape(-1)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """(grid², dim) table (plus a leading zero row for the cls token), row-major patches.

    Half the dimensions encode the column, half the row, in MAE's order.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    col, row = torch.meshgrid(coords, coords, indexing="xy")  # col varies along a row
    table = torch.cat([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim), table], dim=0)
    return table


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, C, L, p²) with patches in row-major order."""
    b, c, h, w = imgs.shape
    p = patch_size
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 1, 2, 4, 3, 5).reshape(b, c, (h // p) * (w // p), p * p)


# ---------------------------------------------------------------------------------------------


class GroupChannelMAE(nn.Module):
    """Masked autoencoder over band groups (SatMAE group-channel).

    ``groups`` holds channel indices into the input's channel axis; channels may be left out
    of every group (they are then ignored) but may not appear in two groups.
    """

    def __init__(
        self,
        *,
        img_size: int = 96,
        patch_size: int = 8,
        in_chans: int,
        groups: Sequence[Sequence[int]],
        embed_dim: int,
        depth: int,
        num_heads: int,
        decoder_embed_dim: int,
        decoder_depth: int,
        decoder_num_heads: int,
        mlp_ratio: float = 4.0,
        channel_embed: int,
        decoder_channel_embed: int = 128,
        norm_pix_loss: bool = False,
        loss_pairing: str = "official",
        spatial_mask: bool = False,
    ):
        super().__init__()
        groups = tuple(tuple(int(c) for c in g) for g in groups)
        flat = [c for g in groups for c in g]
        if not groups or any(len(g) == 0 for g in groups):
            raise ValueError(f"groups must be non-empty lists of channel indices, got {groups}")
        if len(set(flat)) != len(flat):
            raise ValueError(f"a channel appears in more than one group: {groups}")
        if min(flat) < 0 or max(flat) >= in_chans:
            raise ValueError(f"group channel indices must lie in [0, {in_chans}), got {groups}")
        if loss_pairing not in LOSS_PAIRINGS:
            raise ValueError(f"unknown loss_pairing {loss_pairing!r}; allowed: {', '.join(LOSS_PAIRINGS)}")
        if loss_pairing == "official" and sorted(flat) != list(range(in_chans)):
            raise ValueError(f"loss_pairing 'official' needs groups that cover each of the {in_chans} input channels "
                             f"exactly once (SatMAE compares the concatenated predictions with every channel), "
                             f"got {groups}; use loss_pairing 'per_group' to leave channels out")
        if img_size % patch_size:
            raise ValueError(f"img_size ({img_size}) must be a multiple of patch_size ({patch_size})")
        for name, dim, part in (("encoder", embed_dim, channel_embed),
                                ("decoder", decoder_embed_dim, decoder_channel_embed)):
            if not 0 < part < dim:
                raise ValueError(f"{name} group embedding ({part}) must be inside (0, {dim})")

        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.groups = groups
        self.embed_dim, self.depth, self.num_heads, self.mlp_ratio = embed_dim, depth, num_heads, mlp_ratio
        self.channel_embed_dim = channel_embed
        self.norm_pix_loss = norm_pix_loss
        self.loss_pairing = loss_pairing
        self.spatial_mask = spatial_mask
        grid = img_size // patch_size
        self.num_patches = grid * grid
        norm_layer = partial(nn.LayerNorm, eps=NORM_EPS)

        # encoder
        self.patch_embed = nn.ModuleList(
            PatchEmbed(img_size, patch_size, len(g), embed_dim, bias=True) for g in groups
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_2d(embed_dim - channel_embed, grid)[None])
        self.register_buffer("channel_embed", sincos_1d(channel_embed, torch.arange(len(groups)))[None])
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)
        )
        self.norm = norm_layer(embed_dim)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed",
                             sincos_2d(decoder_embed_dim - decoder_channel_embed, grid)[None])
        # one extra group row stands for the cls token
        self.register_buffer("decoder_channel_embed",
                             sincos_1d(decoder_channel_embed, torch.arange(len(groups) + 1))[None])
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.ModuleList(
            nn.Linear(decoder_embed_dim, len(g) * patch_size**2, bias=True) for g in groups
        )
        self._init_weights()

    # -- initialisation (MAE's) ---------------------------------------------------------------

    def _init_weights(self) -> None:
        for pe in self.patch_embed:
            w = pe.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like a Linear, not a Conv2d
            # the bias keeps Conv2d's default U(±1/√fan_in): SatMAE's init never touches it
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- pieces -------------------------------------------------------------------------------

    def _tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, G, L, D) patch tokens with position and group codes added."""
        if imgs.ndim != 4 or imgs.shape[1] != self.in_chans:
            raise ValueError(f"expected (B, {self.in_chans}, {self.img_size}, {self.img_size}) images, "
                             f"got {tuple(imgs.shape)}")
        x = torch.stack([pe(imgs[:, list(g)]) for pe, g in zip(self.patch_embed, self.groups)], dim=1)
        G, L = x.shape[1], x.shape[2]
        pos = self.pos_embed[:, None, 1:, :].expand(-1, G, -1, -1)        # (1, G, L, pD)
        grp = self.channel_embed[:, :, None, :].expand(-1, -1, L, -1)     # (1, G, L, cD)
        return x + torch.cat([pos, grp], dim=-1).to(x.dtype)

    def _encode(self, x: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        """(B, N, D) tokens → (B, 1 + N, D) after prepending cls, the blocks and (by default) the norm."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x) if final_norm else x

    def random_masking(self, batch: int, mask_ratio: float, device,
                       noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Draw SatMAE's mask over the ``G·L`` tokens of each sample (token ``g·L + l``).

        Returns ``ids_shuffle`` (B, G·L) (the kept tokens first, in the order the encoder sees
        them), ``ids_restore`` (B, G·L) and the number kept. Lowest noise is kept.

        * independent (default): ``noise`` (B, G·L); ``int(G·L·(1 − r))`` tokens kept.
        * ``spatial_mask``: ``noise`` (B, L) over positions; the ``int(L·(1 − r))`` kept positions
          are visible in every group, and the kept tokens are ordered group by group, each group's
          positions in noise order (SatMAE's order of visible tokens).
        """
        G, L = len(self.groups), self.num_patches
        n = L if self.spatial_mask else G * L
        n_keep = kept_count(n, mask_ratio)
        if n_keep < 1:
            raise ValueError(f"mask_ratio {mask_ratio} leaves no visible token out of {n}")
        if noise is None:
            noise = torch.rand(batch, n, device=device)
        elif noise.shape != (batch, n):
            raise ValueError(f"noise must have shape {(batch, n)} ({'positions' if self.spatial_mask else 'tokens'}"
                             f" per sample), got {tuple(noise.shape)}")
        ids_shuffle = torch.argsort(noise.to(device), dim=1)
        if self.spatial_mask:
            offsets = (torch.arange(G, device=device) * L)[None, :, None]           # (1, G, 1)
            kept = (ids_shuffle[:, None, :n_keep] + offsets).reshape(batch, -1)     # group by group
            hidden = (ids_shuffle[:, None, n_keep:] + offsets).reshape(batch, -1)
            ids_shuffle, n_keep = torch.cat([kept, hidden], dim=1), G * n_keep
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        return ids_shuffle, ids_restore, n_keep

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float = 0.75,
                        noise: torch.Tensor | None = None):
        """Encode the visible tokens.

        imgs: (B, C, H, W) float, normalised. ``noise`` fixes the mask (see :meth:`random_masking`).
        Returns ``latent`` (B, 1 + kept, D) (cls first), ``mask`` (B, G, L) float with
        1 = masked, and ``ids_restore`` (B, G·L).
        """
        tokens = self._tokens(imgs)
        b, G, L, D = tokens.shape
        tokens = tokens.reshape(b, G * L, D)
        ids_shuffle, ids_restore, n_keep = self.random_masking(b, mask_ratio, imgs.device, noise)
        ids_keep = ids_shuffle[:, :n_keep]
        visible = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, D))
        mask = torch.ones(b, G * L, device=imgs.device)
        mask[:, :n_keep] = 0
        mask = torch.gather(mask, 1, ids_restore).reshape(b, G, L)
        return self._encode(visible), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, 1 + kept, D) latent → (B, C, L, p²) pixel predictions in input channel order.

        Channels in no group are predicted as zeros (and never enter the loss).
        """
        x = self.decoder_embed(latent)
        b, n_vis, Dd = x.shape
        G, L = len(self.groups), self.num_patches
        mask_tokens = self.mask_token.to(x.dtype).expand(b, G * L + 1 - n_vis, -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, Dd))  # un-shuffle

        pos = self.decoder_pos_embed[:, None, 1:, :].expand(-1, G, -1, -1)
        grp = self.decoder_channel_embed[:, :G, None, :].expand(-1, -1, L, -1)
        pos_grp = torch.cat([pos, grp], dim=-1).reshape(1, G * L, Dd)
        cls_code = torch.cat([self.decoder_pos_embed[:, :1], self.decoder_channel_embed[:, G:]], dim=-1)
        x = torch.cat([x[:, :1], x_], dim=1) + torch.cat([cls_code, pos_grp], dim=1).to(x.dtype)

        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)[:, 1:].reshape(b, G, L, Dd)

        p2 = self.patch_size**2
        pred = x.new_zeros(b, self.in_chans, L, p2)
        for i, (head, g) in enumerate(zip(self.decoder_pred, self.groups)):
            out = head(x[:, i]).reshape(b, L, len(g), p2).transpose(1, 2)  # (B, c_g, L, p²)
            pred[:, list(g)] = out.to(pred.dtype)
        return pred

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over masked tokens only, paired as ``loss_pairing`` says.

        imgs (B, C, H, W), pred (B, C, L, p²) in input channel order, mask (B, G, L) with
        1 = masked. Per token the error is a mean over ``len(group)`` channels and the pixels;
        the loss is the mean over all masked tokens of the batch (SatMAE's weighting).
        """
        target = patchify(imgs, self.patch_size).float()  # (B, C, L, p²)
        pred = pred.float()
        if self.loss_pairing == "official":
            return self._official_loss(target, pred, mask)
        total = target.new_zeros(())
        for i, g in enumerate(self.groups):
            t, p = target[:, list(g)], pred[:, list(g)]
            if self.norm_pix_loss:  # per token, over this group's channels and pixels
                mean, var = t.mean(dim=(1, 3), keepdim=True), t.var(dim=(1, 3), keepdim=True)
                t = (t - mean) / (var + 1e-6) ** 0.5
            err = ((p - t) ** 2).mean(dim=(1, 3))  # (B, L)
            total = total + (err * mask[:, i]).sum()
        return total / mask.sum().clamp_min(1)

    def _official_loss(self, target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SatMAE's pairing: slot ``k`` of the group-ordered prediction meets target channel ``k``."""
        if self.norm_pix_loss:  # per token, over all channels and pixels of the patch together
            b, c, L, p2 = target.shape
            patches = target.transpose(1, 2).reshape(b, L, c * p2)
            mean, var = patches.mean(dim=-1), patches.var(dim=-1)  # (B, L)
            target = (target - mean[:, None, :, None]) / (var[:, None, :, None] + 1e-6) ** 0.5
        in_group_order = pred[:, [c for g in self.groups for c in g]]  # what SatMAE's decoder returns
        err = ((in_group_order - target) ** 2).mean(dim=-1)          # (B, C, L)
        total = target.new_zeros(())
        for i, g in enumerate(self.groups):
            total = total + (err[:, list(g)].mean(dim=1) * mask[:, i]).sum()
        return total / mask.sum().clamp_min(1)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        """imgs (B, C, H, W) float → (loss, pred (B, C, L, p²), mask (B, G, L), 1 = masked)."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def embed(self, imgs: torch.Tensor, pooling: str = DEFAULT_POOLING) -> torch.Tensor:
        """(B, C, H, W) normalised → (B, D), pooled as ``pooling`` says (see :data:`POOLINGS`).

        No masking; the cls token takes part in attention but not in the mean. ``mean_then_norm``
        applies the fresh ``fc_norm`` at its initial weights (a LayerNorm without affine).
        Differentiable, so fine-tuning can train through it; wrap frozen use in ``torch.no_grad()``.
        """
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")
        x = self._encode(self._tokens(imgs).flatten(1, 2), final_norm=pooling == "norm_then_mean")
        pooled = x[:, 1:].mean(dim=1)
        return pooled if pooling == "norm_then_mean" else nn.functional.layer_norm(pooled, (x.shape[-1],), eps=NORM_EPS)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights and fixed tables only (no decoder), detached on CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()
                if k.startswith(ENCODER_PREFIXES)}

    def encoder_config(self) -> dict:
        """Architecture fields a loader needs to rebuild the encoder."""
        return dict(
            img_size=self.img_size, patch_size=self.patch_size, in_chans=self.in_chans,
            group_indices=[list(g) for g in self.groups], embed_dim=self.embed_dim,
            depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
            channel_embed=self.channel_embed_dim, norm_eps=NORM_EPS,
        )


# ---------------------------------------------------------------------------------------------
# size presets (timm style: small functions, not branches)


def _tiny() -> dict:
    return dict(embed_dim=96, depth=4, num_heads=3, decoder_embed_dim=64, decoder_depth=2,
                decoder_num_heads=4, channel_embed=32, decoder_channel_embed=16)


def _small() -> dict:
    return dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256, decoder_depth=4,
                decoder_num_heads=8, channel_embed=128, decoder_channel_embed=64)


def _base() -> dict:  # the paper's model (ViT-B, SatMAE's decoder)
    return dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8,
                decoder_num_heads=16, channel_embed=256, decoder_channel_embed=128)


def _large() -> dict:  # SatMAE's mae_vit_large group-channel setting
    return dict(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512, decoder_depth=8,
                decoder_num_heads=16, channel_embed=256, decoder_channel_embed=128)


PRESETS: dict[str, dict] = {"tiny": _tiny(), "small": _small(), "base": _base(), "large": _large()}


def group_indices(bands: Sequence[str], groups: Sequence[Sequence[str]]) -> tuple[tuple[int, ...], ...]:
    """Map band-name groups to channel indices of ``bands`` (names canonicalised)."""
    order = [B.canonical(b) for b in bands]
    index = {b: i for i, b in enumerate(order)}
    out = []
    for g in groups:
        idx = []
        for name in g:
            band = B.canonical(name)
            if band not in index:
                raise ValueError(f"group band {name!r} is not among the model bands {order}")
            idx.append(index[band])
        out.append(tuple(idx))
    return tuple(out)


def build_mae(preset: str, bands: Sequence[str], groups: Sequence[Sequence[str]], img_size: int = 96,
              patch_size: int = 8, norm_pix_loss: bool = False, loss_pairing: str = "official",
              spatial_mask: bool = False) -> GroupChannelMAE:
    """A :class:`GroupChannelMAE` of a named size over ``bands`` (input channel order)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; allowed: {', '.join(PRESETS)}")
    return GroupChannelMAE(img_size=img_size, patch_size=patch_size, in_chans=len(bands),
                           groups=group_indices(bands, groups), norm_pix_loss=norm_pix_loss,
                           loss_pairing=loss_pairing, spatial_mask=spatial_mask, **PRESETS[preset])


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (fixed sin-cos tables are buffers and do not count)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _encoder_parameter_count(model: GroupChannelMAE) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(ENCODER_PREFIXES))


def parameter_counts(model: GroupChannelMAE) -> dict[str, int]:
    """``{"total", "encoder", "decoder"}`` trainable parameter counts."""
    total = count_parameters(model)
    enc = _encoder_parameter_count(model)
    return {"total": total, "encoder": enc, "decoder": total - enc}


__all__ = ["GroupChannelMAE", "PRESETS", "build_mae", "group_indices", "parameter_counts",
           "count_parameters", "patchify", "sincos_1d", "sincos_2d", "kept_count", "ENCODER_PREFIXES",
           "LOSS_PAIRINGS", "POOLINGS", "DEFAULT_POOLING"]
