"""Batched on-device augmentation: shapes, per-sample randomness, exact crops, jitter ranges."""

from __future__ import annotations

import numpy as np
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
