"""Diversity measures: Shannon entropies (nats) of categories and spectra."""

import math

import numpy as np
import pytest

from pw_ray.analyze import diversity as D


def test_shannon_entropy_ignores_zero_counts():
    assert D.shannon_entropy([5, 0, 5]) == pytest.approx(math.log(2))


def test_shannon_entropy_of_proportions_equals_that_of_counts():
    assert D.shannon_entropy([0.5, 0.25, 0.25]) == pytest.approx(D.shannon_entropy([2, 1, 1]))
    assert D.shannon_entropy([0.5, 0.25, 0.25]) == pytest.approx(1.5 * math.log(2))


def test_continent_entropy_of_an_equal_global_set_is_ln6():
    regions = ["af", "as", "eu", "na", "oc", "sa"] * 100
    assert D.category_entropy(regions) == pytest.approx(math.log(6))


def test_single_category_has_zero_entropy_not_minus_zero():
    h = D.category_entropy(["eu"] * 10)
    assert h == 0.0 and math.copysign(1.0, h) == 1.0  # a report would show "-0.000"


def test_constant_chip_has_zero_hist_entropy():
    chip = np.full((4, 8, 8), 1234, dtype=np.uint16)
    assert D.spectral_entropy_hist(chip) == 0.0


def test_hist_entropy_of_k_equally_common_values_in_distinct_bins_is_ln_k():
    k = 4  # 16 bins of width 625: values 100, 1000, 5000, 9999 fall in bins 0, 1, 8, 15
    values = np.array([100, 1000, 5000, 9999], dtype=np.uint16)
    chip = np.stack([np.tile(values, 16).reshape(8, 8)] * 3)
    assert D.spectral_entropy_hist(chip, bins=16) == pytest.approx(math.log(k))


def test_hist_range_is_fixed_and_clips():
    # 12000 is clipped to 10000 (last bin), 0 is bin 0: two equal bins → ln 2
    chip = np.array([0, 12000] * 8, dtype=np.uint16).reshape(1, 4, 4)
    assert D.spectral_entropy_hist(chip, bins=16) == pytest.approx(math.log(2))


def test_hist_batch_matches_single_chip():
    chips = np.random.default_rng(0).integers(0, 10000, (5, 3, 6, 6)).astype(np.uint16)
    batch = D.spectral_entropy_hist_batch(chips)
    assert batch == pytest.approx([D.spectral_entropy_hist(c) for c in chips])


def _chip_of_spectra(spectra, side=6):
    """A (C, side, side) chip whose pixels cycle through the given spectra equally often."""
    spectra = np.asarray(spectra, dtype=np.uint16)
    k, c = spectra.shape
    pix = np.tile(spectra, (side * side // k, 1))  # (side², C)
    return pix.T.reshape(c, side, side)


def test_codebook_entropy_of_k_equally_common_codeword_spectra_is_ln_k():
    spectra = np.array([[500, 800, 3000], [2000, 2500, 2800], [300, 200, 100], [6000, 6000, 6000]])
    chip = _chip_of_spectra(spectra)  # 36 pixels, 9 of each spectrum
    codebook = spectra / 10000.0
    assert D.spectral_entropy_codebook(chip, codebook) == pytest.approx(math.log(4))


def test_fit_codebook_recovers_well_separated_spectra_and_is_deterministic():
    spectra = np.array([[500, 800, 3000], [2000, 2500, 2800], [6000, 6000, 6000]], dtype=float)
    rng = np.random.default_rng(0)
    pixels = np.repeat(spectra, 50, axis=0) + rng.normal(0, 10, (150, 3))
    cb = D.fit_codebook(pixels, k=3, seed=1)
    found = cb[np.argsort(cb[:, 0])] * 10000
    np.testing.assert_allclose(found, spectra, atol=10)
    np.testing.assert_array_equal(cb, D.fit_codebook(pixels, k=3, seed=1))


def _fixture(n=23, seed=0):
    rng = np.random.default_rng(seed)
    chips = rng.integers(0, 10000, (n, 3, 8, 8)).astype(np.uint16)
    regions = rng.choice(["af", "eu", "sa"], n).tolist()
    biomes = rng.choice(["tundra", "desert"], n).tolist()
    landcovers = rng.choice(["crop", "forest", "water", "urban"], n).tolist()
    codebook = D.fit_codebook(D.sample_pixels(chips, 16, seed=0), k=5, seed=0)
    return chips, regions, biomes, landcovers, codebook


def test_accumulator_equals_the_batch_computation():
    chips, regions, biomes, landcovers, codebook = _fixture()
    acc = D.DiversityAccumulator(bins=16, codebook=codebook)
    acc.update(chips, regions, biomes, landcovers)
    r = acc.result()
    assert r["n_chips"] == 23
    assert r["continent_entropy"] == pytest.approx(D.category_entropy(regions))
    assert r["biome_entropy"] == pytest.approx(D.category_entropy(biomes))
    assert r["landcover_entropy"] == pytest.approx(D.category_entropy(landcovers))
    assert r["spectral_entropy_hist"] == pytest.approx(D.spectral_entropy_hist_batch(chips).mean())
    assert r["spectral_entropy_codebook"] == pytest.approx(D.spectral_entropy_codebook_batch(chips, codebook).mean())


@pytest.mark.parametrize("chunk", [1, 4, 10])
def test_accumulator_result_does_not_depend_on_chunking(chunk):
    chips, regions, biomes, landcovers, codebook = _fixture()
    whole = D.DiversityAccumulator(codebook=codebook)
    whole.update(chips, regions, biomes, landcovers)
    parts = D.DiversityAccumulator(codebook=codebook)
    for i in range(0, len(chips), chunk):
        s = slice(i, i + chunk)
        parts.update(chips[s], regions[s], biomes[s], landcovers[s])
    expected = whole.result()
    got = parts.result()
    assert got["n_chips"] == expected["n_chips"]
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-12)


def test_merged_accumulators_equal_one_pass():
    chips, regions, biomes, landcovers, codebook = _fixture()
    one = D.DiversityAccumulator(codebook=codebook)
    one.update(chips, regions, biomes, landcovers)
    a, b = D.DiversityAccumulator(codebook=codebook), D.DiversityAccumulator(codebook=codebook)
    a.update(chips[:9], regions[:9], biomes[:9], landcovers[:9])
    b.update(chips[9:], regions[9:], biomes[9:], landcovers[9:])
    merged = a.merge(b).result()
    for key, value in one.result().items():
        assert merged[key] == pytest.approx(value, rel=1e-12)


def test_accumulator_without_codebook_reports_nan_for_it():
    chips, regions, *_ = _fixture(n=3)
    acc = D.DiversityAccumulator()
    acc.update(chips, regions)
    r = acc.result()
    assert math.isnan(r["spectral_entropy_codebook"]) and math.isnan(r["biome_entropy"])
