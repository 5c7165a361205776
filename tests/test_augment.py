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


def test_identity_warp_with_crop_equal_to_the_image_returns_the_image():
    """No rotation, flips or jitter and crop == size: the affine warp is the identity."""
    x = _batch(s=32)
    aug = BatchAugment(crop=32, mean=(0, 0, 0), std=(1, 1, 1), rotation=0, brightness=0, contrast=0,
                       saturation=0, hflip=False, vflip=False)
    out = aug(x, train=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x.permute(0, 3, 1, 2).float() / 255.0, atol=1e-5, rtol=0)


def test_drawn_hflip_only_mirrors_or_keeps_each_image_about_half_the_time():
    x = _batch(b=64, s=16)
    aug = BatchAugment(crop=16, mean=(0, 0, 0), std=(1, 1, 1), rotation=0, brightness=0, contrast=0,
                       saturation=0, hflip=True, vflip=False)
    out = aug(x, train=True, generator=torch.Generator().manual_seed(3))
    src = x.permute(0, 3, 1, 2).float() / 255.0
    same = torch.isclose(out, src, atol=1e-5).flatten(1).all(1)
    flipped = torch.isclose(out, src.flip(-1), atol=1e-5).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 54  # about half of 64


def test_drawn_parameters_differ_per_sample_and_repeat_with_the_seed():
    x = _batch(b=1).repeat(8, 1, 1, 1)
    aug = BatchAugment(crop=32)
    a = aug(x, train=True, generator=torch.Generator().manual_seed(7))
    b = aug(x, train=True, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    diffs = [(a[0] - a[i]).abs().mean().item() for i in range(1, 8)]
    assert min(diffs) > 1e-3  # the same image is augmented differently in each slot


def test_strong_jitter_output_stays_within_0_1_before_normalisation():
    x = _batch(b=16)
    aug = BatchAugment(crop=32, mean=(0, 0, 0), std=(1, 1, 1), brightness=0.5, contrast=0.5, saturation=0.5)
    out = aug(x, train=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 32, 32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_crop_larger_than_the_image_or_non_uint8_batch_is_refused():
    aug = BatchAugment(crop=64)
    with pytest.raises(ValueError, match="larger than"):
        aug(_batch(s=40), train=True)
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 40, 40, 3), train=True)
    with pytest.raises(ValueError, match="larger than"):
        center_crop(torch.zeros(1, 3, 10, 10), 12)


def _params(b, **kw):
    """A ``b x 8`` parameter matrix (columns BatchAugment.PARAMS): the identity, with ``kw`` replaced."""
    base = {"angle": 0.0, "fx": 1.0, "fy": 1.0, "tx": 0.0, "ty": 0.0, "brightness": 1.0, "contrast": 1.0,
            "saturation": 1.0}
    base.update(kw)
    assert tuple(base) == BatchAugment.PARAMS
    return torch.stack([v if isinstance(v, torch.Tensor) else torch.full((b,), float(v)) for v in base.values()], 1)


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
    m = aug.draw(4000, 32, 40, "cpu", torch.Generator().manual_seed(0))
    assert m.shape == (4000, 8)
    p = dict(zip(BatchAugment.PARAMS, m.unbind(1)))
    assert float(p["angle"].abs().max()) <= 30 * torch.pi / 180 and float(p["angle"].abs().max()) > 29 * torch.pi / 180
    assert set(p["fx"].unique().tolist()) == {-1.0, 1.0} and set(p["fy"].unique().tolist()) == {1.0}
    assert abs(float((p["fx"] < 0).float().mean()) - 0.5) < 0.05
    assert float(p["tx"].abs().max()) <= (40 - 24) / 40 and float(p["ty"].abs().max()) <= (32 - 24) / 32
    for name, strength in (("brightness", 0.2), ("contrast", 0.1), ("saturation", 0.3)):
        v = p[name]
        assert 1 - strength <= float(v.min()) < 1 - 0.9 * strength and 1 + 0.9 * strength < float(v.max()) <= 1 + strength


# ----------------------------------------------------------------------- the warp with crop < image, non-square


def _hw_batch(b=3, h=40, w=48, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=g)


def _plain(crop):
    """Warp only: no jitter, no normalisation (mean 0, std 1)."""
    return BatchAugment(crop=crop, mean=(0, 0, 0), std=(1, 1, 1))


def _window(x, top, left, crop):
    """The ``crop x crop`` window at (top, left) of a uint8 B x H x W x 3 batch, as float NCHW in 0..1."""
    return x.permute(0, 3, 1, 2).float()[:, :, top:top + crop, left:left + crop] / 255.0


def test_identity_parameters_with_a_smaller_crop_give_the_centre_crop_of_a_non_square_image():
    """40 x 48 image, crop 32: the window starts at ((40 - 32) / 2, (48 - 32) / 2) = (4, 8), exactly."""
    x = _hw_batch()
    out = _plain(32).apply(x, _params(3))
    assert out.shape == (3, 3, 32, 32)
    torch.testing.assert_close(out, _window(x, 4, 8, 32), atol=1e-5, rtol=0)
    # the same as the evaluation transform
    torch.testing.assert_close(out, _plain(32)(x, train=False), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dy, dx", [(0, 3), (-2, 0), (4, -8), (-4, 8), (1, -5)])
def test_translation_by_whole_pixels_gives_the_shifted_window(dy, dx):
    """``tx = 2 dx / W``, ``ty = 2 dy / H`` (normalised units) move the window by (dy, dx) pixels; the largest
    drawn offsets ((H - crop) / H, (W - crop) / W) put it flush with the image's edge, never past it."""
    h, w, crop = 40, 48, 32
    x = _hw_batch(h=h, w=w)
    out = _plain(crop).apply(x, _params(3, tx=2 * dx / w, ty=2 * dy / h))
    torch.testing.assert_close(out, _window(x, 4 + dy, 8 + dx, crop), atol=1e-5, rtol=0)


def test_flips_mirror_the_window_horizontally_vertically_or_both():
    x = _hw_batch()
    aug = _plain(32)
    centre = _window(x, 4, 8, 32)
    torch.testing.assert_close(aug.apply(x, _params(3, fx=-1)), centre.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(aug.apply(x, _params(3, fy=-1)), centre.flip(-2), atol=1e-5, rtol=0)
    torch.testing.assert_close(aug.apply(x, _params(3, fx=-1, fy=-1)), centre.flip(-1).flip(-2), atol=1e-5, rtol=0)
    # a flip mirrors the shifted window (crop first, then mirror): the window itself stays where tx puts it
    shifted = _window(x, 4, 8 + 5, 32)
    torch.testing.assert_close(aug.apply(x, _params(3, fx=-1, tx=2 * 5 / 48)), shifted.flip(-1), atol=1e-5, rtol=0)


def test_per_sample_parameters_apply_to_their_own_sample():
    x = _hw_batch()
    tx = torch.tensor([0.0, 2 * 3 / 48, -2 * 8 / 48])
    fy = torch.tensor([-1.0, 1.0, 1.0])
    out = _plain(32).apply(x, _params(3, tx=tx, fy=fy))
    torch.testing.assert_close(out[0], _window(x, 4, 8, 32)[0].flip(-2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], _window(x, 4, 11, 32)[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2], _window(x, 4, 0, 32)[2], atol=1e-5, rtol=0)


def test_quarter_turn_of_a_non_square_image_rotates_pixels_not_normalised_units():
    """The rotation is in pixels although H != W: a quarter turn of the centre 32 x 32 window equals rot90 of
    that window (an anisotropic rotation in normalised coordinates would stretch it)."""
    x = _hw_batch()
    out = _plain(32).apply(x, _params(3, angle=torch.pi / 2))
    torch.testing.assert_close(out, torch.rot90(_window(x, 4, 8, 32), k=1, dims=(2, 3)), atol=1e-5, rtol=0)


def test_normalisation_after_the_warp_is_x_minus_mean_over_std():
    x = _hw_batch()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = BatchAugment(crop=32, mean=mean, std=std).apply(x, _params(3, ty=2 * 3 / 40))
    ref = (_window(x, 7, 8, 32) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)  # one grey level is 1 / 255 / std ~ 0.017


def test_drawn_translation_keeps_the_window_inside_a_non_square_image():
    """Drawn parameters on 40 x 48 with crop 32 and no rotation: every output is a whole-pixel-interpolated
    window inside the image, so no zero padding reaches it (an all-255 image stays all 1)."""
    aug = BatchAugment(crop=32, mean=(0, 0, 0), std=(1, 1, 1), rotation=0, brightness=0, contrast=0, saturation=0)
    x = torch.full((256, 40, 48, 3), 255, dtype=torch.uint8)
    out = aug(x, train=True, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, torch.ones_like(out), atol=1e-5, rtol=0)
