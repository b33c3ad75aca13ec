"""SatMAE group-channel MAE: sizes, masking, loss and embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from pw_ray import bands as B
from pw_ray.models.satmae import GroupChannelMAE, build_mae, parameter_counts, patchify, sincos_1d

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


def test_masking_hides_exactly_round_ratio_of_all_tokens_per_sample(tiny, imgs):
    _, mask, ids_restore = tiny.forward_encoder(imgs, mask_ratio=0.75)
    assert mask.sum(dim=(1, 2)).tolist() == [round(0.75 * G * L)] * 2
    assert ids_restore.shape == (2, G * L)


def test_encoder_sees_only_visible_tokens_plus_cls(tiny, imgs):
    latent, _, _ = tiny.forward_encoder(imgs, mask_ratio=0.75)
    assert latent.shape == (2, 1 + G * L - round(0.75 * G * L), 96)


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
    kept = noise.argsort(dim=1)[:, : G * L - round(0.75 * G * L)]
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


def test_loss_is_mean_squared_error_over_masked_tokens(tiny, imgs):
    pred, mask = _loss_pieces(tiny, imgs)
    target = patchify(imgs, 8)
    per_token = torch.stack([((pred[:, list(g)] - target[:, list(g)]) ** 2).mean(dim=(1, 3))
                             for g in tiny.groups], dim=1)  # (B, G, L)
    expected = (per_token * mask).sum() / mask.sum()
    assert tiny.forward_loss(imgs, pred, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_norm_pix_loss_ignores_a_patch_offset(imgs):
    torch.manual_seed(0)
    model = build_mae("tiny", B.SATMAE_BANDS, B.SATMAE_GROUPS, norm_pix_loss=True)
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
