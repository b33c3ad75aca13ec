"""SatMAE group-channel MAE: sizes, masking, loss and embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from pw_ray import bands as B
from pw_ray.models.satmae import GroupChannelMAE, build_mae, kept_count, parameter_counts, patchify, sincos_1d

G, L = 3, 144  # default groups, (96 / 8)² patches


@pytest.fixture(scope="module")
def tiny() -> GroupChannelMAE:
    torch.manual_seed(0)
    return build_mae("tiny", B.SATMAE_BANDS, B.SATMAE_GROUPS)


@pytest.fixture(scope="module")
def imgs() -> torch.Tensor:
    return torch.rand(2, 10, 96, 96, generator=torch.Generator().manual_seed(1))


def test_base_preset_has_the_papers_trainable_parameter_counts():
    with torch.device("meta"):
        model = build_mae("base", B.SATMAE_BANDS, B.SATMAE_GROUPS, img_size=96, patch_size=8)
    assert parameter_counts(model) == {"total": 111_493_248, "encoder": 85_550_592, "decoder": 25_942_656}


def test_fixed_sincos_tables_are_buffers_of_satmaes_shapes():
    with torch.device("meta"):
        model = build_mae("base", B.SATMAE_BANDS, B.SATMAE_GROUPS)
    shapes = {k: tuple(v.shape) for k, v in model.named_buffers()}
    assert shapes == {"pos_embed": (1, 145, 512), "channel_embed": (1, 3, 256),
                      "decoder_pos_embed": (1, 145, 384), "decoder_channel_embed": (1, 4, 128)}
    assert not any(name in dict(model.named_parameters()) for name in shapes)


def test_sincos_1d_puts_sines_then_cosines():
    table = sincos_1d(4, torch.tensor([1.0]))
    expected = [math.sin(1.0), math.sin(0.01), math.cos(1.0), math.cos(0.01)]
    assert table[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_forward_returns_loss_pixel_predictions_and_group_masks(tiny, imgs):
    loss, pred, mask = tiny(imgs)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (2, 10, L, 64)
    assert mask.shape == (2, G, L)


def test_masking_hides_the_official_count_of_all_tokens_per_sample(tiny, imgs):
    _, mask, ids_restore = tiny.forward_encoder(imgs, mask_ratio=0.75)
    assert mask.sum(dim=(1, 2)).tolist() == [G * L - int(G * L * (1 - 0.75))] * 2  # 324 of 432
    assert ids_restore.shape == (2, G * L)


def test_encoder_sees_only_visible_tokens_plus_cls(tiny, imgs):
    latent, _, _ = tiny.forward_encoder(imgs, mask_ratio=0.75)
    assert latent.shape == (2, 1 + int(G * L * (1 - 0.75)), 96)


def test_masks_are_drawn_independently_per_group(tiny, imgs):
    _, mask, _ = tiny.forward_encoder(imgs, mask_ratio=0.75)
    assert not torch.equal(mask[:, 0], mask[:, 1])
    per_group = mask.sum(dim=2)  # SatMAE: the count per group varies, only the total is fixed
    assert not torch.all(per_group == per_group[:, :1])


def test_noise_fixes_the_mask(tiny, imgs):
    noise = torch.rand(2, G * L)
    _, m1, _ = tiny.forward_encoder(imgs, 0.75, noise=noise)
    _, m2, _ = tiny.forward_encoder(imgs, 0.75, noise=noise)
    assert torch.equal(m1, m2)
    kept = noise.argsort(dim=1)[:, : int(G * L * (1 - 0.75))]
    assert m1.reshape(2, -1).gather(1, kept).sum() == 0


def _loss_pieces(model, imgs):
    with torch.no_grad():
        _, pred, mask = model(imgs)
    return pred, mask


def _first_patch_where(mask, value):
    g, l = (mask[0] == value).nonzero()[0].tolist()
    return g, l


def _perturb_patch(imgs, model, group, patch):
    out = imgs.clone()
    grid = model.img_size // model.patch_size
    r, c = divmod(patch, grid)
    p = model.patch_size
    ch = list(model.groups[group])
    out[0, ch, r * p:(r + 1) * p, c * p:(c + 1) * p] += 5.0
    return out


def test_loss_ignores_target_pixels_of_visible_patches(tiny, imgs):
    pred, mask = _loss_pieces(tiny, imgs)
    g, l = _first_patch_where(mask, 0.0)
    before = tiny.forward_loss(imgs, pred, mask)
    after = tiny.forward_loss(_perturb_patch(imgs, tiny, g, l), pred, mask)
    assert after.item() == pytest.approx(before.item(), abs=1e-7)


def test_loss_counts_target_pixels_of_masked_patches(tiny, imgs):
    pred, mask = _loss_pieces(tiny, imgs)
    g, l = _first_patch_where(mask, 1.0)
    before = tiny.forward_loss(imgs, pred, mask)
    after = tiny.forward_loss(_perturb_patch(imgs, tiny, g, l), pred, mask)
    assert after.item() > before.item() + 1e-3


def test_per_group_loss_is_mean_squared_error_of_each_group_against_its_own_bands(imgs):
    torch.manual_seed(0)
    model = build_mae("tiny", B.SATMAE_BANDS, B.SATMAE_GROUPS, loss_pairing="per_group")
    pred, mask = _loss_pieces(model, imgs)
    target = patchify(imgs, 8)
    per_token = torch.stack([((pred[:, list(g)] - target[:, list(g)]) ** 2).mean(dim=(1, 3))
                             for g in model.groups], dim=1)  # (B, G, L)
    expected = (per_token * mask).sum() / mask.sum()
    assert model.forward_loss(imgs, pred, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_per_group_norm_pix_loss_ignores_a_patch_offset_of_one_group(imgs):
    torch.manual_seed(0)
    model = build_mae("tiny", B.SATMAE_BANDS, B.SATMAE_GROUPS, norm_pix_loss=True, loss_pairing="per_group")
    pred, mask = _loss_pieces(model, imgs)
    g, l = _first_patch_where(mask, 1.0)
    before = model.forward_loss(imgs, pred, mask)
    after = model.forward_loss(_perturb_patch(imgs, model, g, l), pred, mask)  # + constant
    assert after.item() == pytest.approx(before.item(), rel=1e-4)


def test_embed_is_one_vector_per_chip_and_deterministic_in_eval(tiny, imgs):
    tiny.eval()
    with torch.no_grad():
        first, second = tiny.embed(imgs), tiny.embed(imgs)
    tiny.train()
    assert first.shape == (2, 96)
    assert torch.equal(first, second)


def test_model_works_on_small_chips():
    model = build_mae("tiny", B.SATMAE_BANDS, B.SATMAE_GROUPS, img_size=32)
    loss, pred, mask = model(torch.rand(2, 10, 32, 32))
    assert pred.shape == (2, 10, 16, 64) and mask.shape == (2, 3, 16)


def test_group_with_a_band_outside_the_model_bands_names_it():
    with pytest.raises(ValueError, match="B09"):
        build_mae("tiny", B.SATMAE_BANDS, [["B02", "B09"], ["B11"]])


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="tiny, small, base, large"):
        build_mae("huge", B.SATMAE_BANDS, B.SATMAE_GROUPS)


def test_band_aliases_map_to_channel_indices():
    model = build_mae("tiny", ["B2", "B3", "B4", "B8"], [["b8", "B2"], ["B03", "B04"]])
    assert model.groups == ((3, 0), (1, 2))


def test_embed_is_differentiable_for_fine_tuning(tiny, imgs):
    tiny.embed(imgs).sum().backward()
    assert tiny.blocks[0].attn.qkv.weight.grad is not None
    tiny.zero_grad(set_to_none=True)


def test_wrong_channel_count_is_reported_with_the_expected_shape(tiny):
    with pytest.raises(ValueError, match=r"\(B, 10, 96, 96\)"):
        tiny(torch.rand(1, 12, 96, 96))


# --------------------------------------------------------------------------------------------
# Fidelity to SatMAE's official code (sustainlab-group/SatMAE, models_mae_group_channels.py)

PAPER_GROUPS = ((0, 1, 2, 6), (3, 4, 5, 7), (8, 9))  # B.SATMAE_GROUPS as channel indices


def _official_satmae_loss(imgs, pred_channel_order, mask, groups, patch, norm_pix_loss=False):
    """SatMAE's ``forward_decoder`` output and ``forward_loss``, written from their definition.

    The decoder concatenates the groups' predictions in group order; the loss patchifies the
    target in channel order as (N, L, C·p²), optionally normalises each patch over all of it,
    views it as (N, C, L, p²), takes the squared error per channel and patch, and for group i
    averages ``loss[:, group_i]`` over those channel indices, summed under mask i, over the
    number of masked tokens.
    """
    n, c, h, w = imgs.shape
    pred = torch.cat([pred_channel_order[:, list(g)] for g in groups], dim=1)
    hp, wp = h // patch, w // patch
    target = imgs.reshape(n, c, hp, patch, wp, patch)
    target = torch.einsum("nchpwq->nhwcpq", target).reshape(n, hp * wp, c * patch**2)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    target = torch.einsum("nlcp->nclp", target.view(n, hp * wp, c, -1))
    loss = ((pred - target) ** 2).mean(dim=-1)
    total, removed = 0.0, 0.0
    for i, group in enumerate(groups):
        total += (loss[:, list(group), :].mean(dim=1) * mask[:, i]).sum()
        removed += mask[:, i].sum()
    return total / removed


def _random_pieces(seed=3, n=2, c=10, size=32, patch=8):
    g = torch.Generator().manual_seed(seed)
    L = (size // patch) ** 2
    imgs = torch.rand(n, c, size, size, generator=g)
    pred = torch.rand(n, c, L, patch**2, generator=g)
    mask = (torch.rand(n, 3, L, generator=g) < 0.75).float()
    return imgs, pred, mask


def _model(groups=B.SATMAE_GROUPS, bands=B.SATMAE_BANDS, **kw):
    torch.manual_seed(0)
    return build_mae("tiny", bands, groups, img_size=32, **kw)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_official_loss_pairing_is_satmaes_published_loss(norm_pix_loss):
    imgs, pred, mask = _random_pieces()
    model = _model(norm_pix_loss=norm_pix_loss)
    assert model.loss_pairing == "official"  # the default: what the paper trained
    expected = _official_satmae_loss(imgs, pred, mask, PAPER_GROUPS, 8, norm_pix_loss)
    assert model.forward_loss(imgs, pred, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    per_group = _model(norm_pix_loss=norm_pix_loss, loss_pairing="per_group").forward_loss(imgs, pred, mask)
    assert per_group.item() != pytest.approx(expected.item(), rel=1e-5)  # the paper's groups are not in channel order


@pytest.mark.parametrize("groups, same", [
    ((("B02", "B03", "B04", "B05"), ("B06", "B07", "B08", "B8A"), ("B11", "B12")), True),   # channels 0…9 in order
    (B.SATMAE_GROUPS, False),                                                               # 0,1,2,6 | 3,4,5,7 | 8,9
    ((("B06", "B07", "B08", "B8A"), ("B02", "B03", "B04", "B05"), ("B11", "B12")), False),  # contiguous, out of order
])
def test_loss_pairings_agree_exactly_when_the_groups_list_the_channels_in_order(groups, same):
    imgs, pred, mask = _random_pieces(seed=4)
    official = _model(groups).forward_loss(imgs, pred, mask).item()
    per_group = _model(groups, loss_pairing="per_group").forward_loss(imgs, pred, mask).item()
    assert (official == pytest.approx(per_group, rel=1e-6)) is same


def test_official_loss_pairing_needs_groups_covering_every_channel():
    with pytest.raises(ValueError, match="per_group"):
        _model([["B02", "B03"], ["B11"]])
    assert _model([["B02", "B03"], ["B11"]], loss_pairing="per_group").groups == ((0, 1), (8,))


def test_kept_count_is_satmaes_int_of_n_times_one_minus_ratio():
    # 432 tokens at 0.6: SatMAE keeps 172 (n − round(r·n) would keep 173)
    assert [kept_count(432, r) for r in (0.75, 0.6, 0.7, 0.9)] == [108, 172, 129, 43]
    model = _model()
    noise = torch.rand(2, 3 * 16, generator=torch.Generator().manual_seed(0))
    latent, mask, _ = model.forward_encoder(torch.rand(2, 10, 32, 32), mask_ratio=0.65, noise=noise)
    assert latent.shape[1] == 1 + 16  # int(48 · 0.35) = 16 kept, where 48 − round(31.2) = 17
    assert mask.sum(dim=(1, 2)).tolist() == [32, 32]


def test_spatial_mask_hides_the_same_lowest_noise_positions_in_every_group():
    model = _model(spatial_mask=True)
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(1))  # one value per position
    _, mask, ids_restore = model.forward_encoder(torch.rand(2, 10, 32, 32), mask_ratio=0.75, noise=noise)
    assert torch.equal(mask[:, 0], mask[:, 1]) and torch.equal(mask[:, 0], mask[:, 2])
    assert mask[:, 0].sum(dim=1).tolist() == [16 - int(16 * 0.25)] * 2
    kept = noise.argsort(dim=1)[:, :4]
    assert mask[:, 0].gather(1, kept).sum() == 0 and ids_restore.shape == (2, 48)


def test_spatial_mask_encodes_satmaes_visible_tokens_in_satmaes_order():
    """SatMAE: (N, G, L, D) → (N, L, G·D), keep the lowest-noise positions, back to (N, G·keep, D)."""
    model = _model(spatial_mask=True).eval()
    imgs = torch.rand(2, 10, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        latent, _, _ = model.forward_encoder(imgs, mask_ratio=0.75, noise=noise)
        x = model._tokens(imgs)                                  # (N, G, L, D)
        n, g, l, d = x.shape
        x = x.permute(0, 2, 1, 3).reshape(n, l, g * d)
        keep = int(l * (1 - 0.75))
        ids_keep = torch.argsort(noise, dim=1)[:, :keep]
        x = torch.gather(x, 1, ids_keep[..., None].repeat(1, 1, g * d))
        x = x.view(n, keep, g, d).permute(0, 2, 1, 3).reshape(n, -1, d)
        expected = model._encode(x)
    torch.testing.assert_close(latent, expected, atol=1e-6, rtol=0)


def test_spatial_mask_decodes_like_the_same_mask_drawn_token_by_token():
    spatial, independent = _model(spatial_mask=True).eval(), _model().eval()
    imgs = torch.rand(2, 10, 32, 32, generator=torch.Generator().manual_seed(4))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(5))
    # the same positions in every group, drawn over all 48 tokens (group g a hair noisier)
    token_noise = (noise[:, None, :] + 1e-4 * torch.arange(3.0)[None, :, None]).reshape(2, 48)
    with torch.no_grad():
        loss_s, pred_s, mask_s = spatial(imgs, 0.75, noise=noise)
        loss_i, pred_i, mask_i = independent(imgs, 0.75, noise=token_noise)
    assert torch.equal(mask_s, mask_i)
    torch.testing.assert_close(pred_s, pred_i, atol=1e-5, rtol=0)
    assert loss_s.item() == pytest.approx(loss_i.item(), rel=1e-5)


def test_patch_embedding_bias_keeps_conv2ds_default_init():
    model = build_mae("tiny", B.SATMAE_BANDS, B.SATMAE_GROUPS)
    for pe, g in zip(model.patch_embed, model.groups):
        bound = 1 / math.sqrt(len(g) * 8 * 8)  # U(±1/√fan_in), fan_in = channels × 8 × 8
        bias = pe.proj.bias.detach()
        assert bias.abs().max().item() <= bound
        assert bias.abs().max().item() > 0.5 * bound and bias.std().item() > 0.3 * bound


def test_embed_pooling_mean_then_norm_is_satmaes_global_pool_head(tiny, imgs):
    tiny.eval()
    with torch.no_grad():
        x = tiny._tokens(imgs).flatten(1, 2)
        x = torch.cat([tiny.cls_token.expand(len(x), -1, -1), x], dim=1)
        for blk in tiny.blocks:
            x = blk(x)
        pooled = x[:, 1:].mean(dim=1)
        fc_norm = torch.nn.LayerNorm(96, eps=1e-6)  # fresh, as SatMAE's fine-tuning model builds it
        satmae = fc_norm(pooled)
        mae = tiny.norm(x)[:, 1:].mean(dim=1)
        torch.testing.assert_close(tiny.embed(imgs), satmae, atol=1e-5, rtol=0)  # the default
        torch.testing.assert_close(tiny.embed(imgs, pooling="mean_then_norm"), satmae, atol=1e-5, rtol=0)
        torch.testing.assert_close(tiny.embed(imgs, pooling="norm_then_mean"), mae, atol=1e-6, rtol=0)
    tiny.train()
    assert (satmae - mae).abs().max() > 0.1


def test_unknown_pooling_lists_the_allowed_ones(tiny, imgs):
    with pytest.raises(ValueError, match="mean_then_norm, norm_then_mean"):
        tiny.embed(imgs, pooling="cls")
