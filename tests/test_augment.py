"""Batched on-device augmentation: shapes, per-sample randomness, exact crops, jitter ranges."""

from __future__ import annotations

import pytest
import torch

from metanet_utils.augment import BatchAugment, center_crop


def _batch(b=6, s=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, generator=g)


def test_eval_is_the_normalised_centre_crop():
    x = _batch()
    aug = BatchAugment(crop=32, mean=(0.1, 0.2, 0.3), std=(0.5, 0.4, 0.3))
    out = aug(x, train=False)
    ref = x.permute(0, 3, 1, 2).float()[:, :, 4:36, 4:36] / 255.0
    ref = (ref - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref)


def test_identity_parameters_reproduce_an_exact_crop():
    """No rotation, flips or jitter and crop == size: the affine warp is the identity."""
    x = _batch(s=32)
    aug = BatchAugment(crop=32, mean=(0, 0, 0), std=(1, 1, 1), rotation=0, brightness=0, contrast=0,
                       saturation=0, hflip=False, vflip=False)
    out = aug(x, train=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x.permute(0, 3, 1, 2).float() / 255.0, atol=1e-5, rtol=0)


def test_flip_only_mirrors_the_image():
    x = _batch(b=64, s=16)
    aug = BatchAugment(crop=16, mean=(0, 0, 0), std=(1, 1, 1), rotation=0, brightness=0, contrast=0,
                       saturation=0, hflip=True, vflip=False)
    out = aug(x, train=True, generator=torch.Generator().manual_seed(3))
    src = x.permute(0, 3, 1, 2).float() / 255.0
    same = torch.isclose(out, src, atol=1e-5).flatten(1).all(1)
    flipped = torch.isclose(out, src.flip(-1), atol=1e-5).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 54  # about half of 64


def test_parameters_differ_per_sample_and_repeat_with_the_seed():
    x = _batch(b=1).repeat(8, 1, 1, 1)
    aug = BatchAugment(crop=32)
    a = aug(x, train=True, generator=torch.Generator().manual_seed(7))
    b = aug(x, train=True, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    diffs = [(a[0] - a[i]).abs().mean().item() for i in range(1, 8)]
    assert min(diffs) > 1e-3  # the same image is augmented differently in each slot


def test_output_stays_in_the_normalised_range():
    x = _batch(b=16)
    aug = BatchAugment(crop=32, mean=(0, 0, 0), std=(1, 1, 1), brightness=0.5, contrast=0.5, saturation=0.5)
    out = aug(x, train=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 32, 32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_bad_inputs_are_refused():
    aug = BatchAugment(crop=64)
    with pytest.raises(ValueError, match="larger than"):
        aug(_batch(s=40), train=True)
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 40, 40, 3), train=True)
    with pytest.raises(ValueError, match="larger than"):
        center_crop(torch.zeros(1, 3, 10, 10), 12)


def _params(b, **kw):
    base = {"angle": 0.0, "fx": 1.0, "fy": 1.0, "tx": 0.0, "ty": 0.0, "brightness": 1.0, "contrast": 1.0,
            "saturation": 1.0}
    base.update(kw)
    return {k: (v if isinstance(v, torch.Tensor) else torch.full((b,), float(v))) for k, v in base.items()}


def test_a_quarter_turn_equals_rot90():
    """The affine warp's conventions (rotation sign, pixel centres) against torch.rot90, exact."""
    x = _batch(b=3, s=24)
    aug = BatchAugment(crop=24, mean=(0, 0, 0), std=(1, 1, 1))
    out = aug.apply(x, _params(3, angle=torch.pi / 2))
    ref = torch.rot90(x.permute(0, 3, 1, 2).float() / 255.0, k=1, dims=(2, 3))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_colour_jitter_matches_torchvision_functional():
    """Brightness, then contrast, then saturation with given factors, per sample, against torchvision's
    adjust_* on each image (torchvision weighs green 0.587 and red 0.2989 where we use 0.299)."""
    import torchvision.transforms.functional as TF

    b = 4
    x = _batch(b=b, s=20, seed=4)
    bf, cf, sf = torch.tensor([0.8, 1.0, 1.2, 1.1]), torch.tensor([1.2, 0.8, 1.0, 0.9]), torch.tensor([0.8, 1.2, 1.1, 1.0])
    aug = BatchAugment(crop=20, mean=(0, 0, 0), std=(1, 1, 1))
    out = aug.apply(x, _params(b, brightness=bf, contrast=cf, saturation=sf))
    src = x.permute(0, 3, 1, 2).float() / 255.0
    for i in range(b):
        ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(src[i], float(bf[i])), float(cf[i])),
                                   float(sf[i]))
        torch.testing.assert_close(out[i], ref, atol=2e-3, rtol=0)


def test_drawn_parameters_follow_the_configured_ranges():
    aug = BatchAugment(crop=24, rotation=30, brightness=0.2, contrast=0.1, saturation=0.3, vflip=False)
    p = aug.draw(4000, 32, 40, "cpu", torch.Generator().manual_seed(0))
    assert float(p["angle"].abs().max()) <= 30 * torch.pi / 180 and float(p["angle"].abs().max()) > 29 * torch.pi / 180
    assert set(p["fx"].unique().tolist()) == {-1.0, 1.0} and set(p["fy"].unique().tolist()) == {1.0}
    assert abs(float((p["fx"] < 0).float().mean()) - 0.5) < 0.05
    assert float(p["tx"].abs().max()) <= (40 - 24) / 40 and float(p["ty"].abs().max()) <= (32 - 24) / 32
    for name, strength in (("brightness", 0.2), ("contrast", 0.1), ("saturation", 0.3)):
        v = p[name]
        assert 1 - strength <= float(v.min()) < 1 - 0.9 * strength and 1 + 0.9 * strength < float(v.max()) <= 1 + strength
