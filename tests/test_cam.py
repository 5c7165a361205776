"""Class activation maps: equal to pytorch-grad-cam's Grad-CAM up to a positive factor (pooling + linear
head), exact w.r.t. the logits, rebuilt from a record (the pick of Figure 2's cases is notebook 08's own code)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from metanet_utils import cam
from metanet_utils.config import RunConfig
from metanet_utils.constants import CLASS_CODES, DX_CODES
from metanet_utils.dataset import Dataset
from metanet_utils.models import build_model

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


class _FeatureSizeGradCAM(GradCAM):
    """Grad-CAM left at feature-map resolution (its resize to the input size becomes the identity)."""

    feature_hw: tuple[int, int] = (1, 1)

    def get_target_width_height(self, input_tensor):
        h, w = self.feature_hw
        return w, h


class _FixedMeta(nn.Module):
    """The model as a function of the images only (metadata fixed): what Grad-CAM expects."""

    def __init__(self, model, meta):
        super().__init__()
        self.model, self.meta = model, meta

    def forward(self, x):
        return self.model(x, self.meta)


class _GatedMaps(nn.Module):
    """Outputs the gated maps F * g of MetaNet (written here from forward_features and gate, independently
    of feature_maps_for_cam), so that Grad-CAM can hook the maps the head pools."""

    def __init__(self, model, meta):
        super().__init__()
        self.model, self.meta = model, meta

    def forward(self, x):
        return self.model.forward_features(x) * self.model.gate(self.meta)[:, :, None, None]


class _GatedHead(nn.Module):
    """images -> gated maps (a hookable module) -> average pool -> linear head."""

    def __init__(self, model, meta):
        super().__init__()
        self.maps = _GatedMaps(model, meta)
        self.head = model.head

    def forward(self, x):
        return self.head(self.maps(x).mean(dim=(2, 3)))


def _norm(a):
    """ReLU, then min-max scaling of each map with pytorch-grad-cam's epsilon, twice as it does (once per layer,
    once after aggregating the layers)."""
    a = np.maximum(np.asarray(a, dtype=np.float64), 0)
    for _ in range(2):
        a = a - a.min(axis=(-2, -1), keepdims=True)
        a = a / (1e-7 + a.max(axis=(-2, -1), keepdims=True))
    return a


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 128, 128, generator=g), torch.rand(3, 17, generator=g)


def _model(fusion: str, seed: int = 0):
    torch.manual_seed(seed)
    m = build_model("test_resnet", fusion, pretrained=False).eval()
    for mod in m.modules():  # non-trivial BatchNorm statistics so that eval mode matters
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    return m


def _gradcam(wrapper, layer, x, classes, hw):
    gc = _FeatureSizeGradCAM(model=wrapper, target_layers=[layer])
    gc.feature_hw = hw
    try:
        return gc(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        gc.activations_and_grads.release()


@pytest.mark.parametrize("fusion", ["none", "concat", "metanet"])
def test_cam_equals_gradcam_on_the_model(fusion, inputs):
    """Grad-CAM hooked on the backbone of the real model (metadata fixed) = our CAM on the maps the head
    pools, up to a positive factor, for the predicted class and for every class. For metanet the gate
    enters Grad-CAM's channel weights (d logit / d F_k = w_ck g_k / hw), so the ungated maps give the
    gated CAM. In float64: a map whose positive maximum is tiny is otherwise all float32 rounding."""
    x, meta = (t.double() for t in inputs)
    model = _model(fusion).double()
    wrapper = _FixedMeta(model, meta)
    pred = cam.class_activation_map(model, x, meta if fusion != "none" else None)
    targets = [pred.classes] + [np.full(len(x), c) for c in range(7)]
    positive = 0
    for classes in targets:
        ours = cam.class_activation_map(model, x, meta, target=classes) if classes is not pred.classes else pred
        assert ours.cams.shape[-2:] == (4, 4)
        theirs = _gradcam(wrapper, model.backbone, x, classes, ours.cams.shape[-2:])
        assert theirs.shape == ours.cams.shape
        assert np.abs(_norm(ours.cams / ours.cams[0].size) - theirs).max() < 1e-5  # Grad-CAM = CAM / (h w)
        positive += int((ours.cams.max(axis=(1, 2)) > 0).sum())
    assert positive >= 6  # real comparisons, not only 0 == 0


def test_metanet_cam_equals_gradcam_on_the_gated_maps(inputs):
    """The brief's construction: a wrapper whose hooked module outputs the gated maps F * g (float64)."""
    x, meta = (t.double() for t in inputs)
    model = _model("metanet", seed=1).double()
    wrapper = _GatedHead(model, meta).eval()
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x), model(x, meta), rtol=1e-5, atol=1e-5)
    for shift in range(3):
        ours = cam.class_activation_map(model, x, meta, target=[(i + shift) % 7 for i in range(3)])
        theirs = _gradcam(wrapper, wrapper.maps, x, ours.classes, ours.cams.shape[-2:])
        assert np.abs(_norm(ours.cams / ours.cams[0].size) - theirs).max() < 1e-5  # Grad-CAM = CAM / (h w)


def test_metanet_cam_is_the_gated_map_not_the_ungated_one(inputs):
    x, meta = inputs
    model = _model("metanet")
    gated = cam.cam_maps(model, x, meta)
    with torch.no_grad():
        feats = model.forward_features(x)
        plain = torch.einsum("kc,bchw->bkhw", model.head.weight[:, : feats.shape[1]], feats)
    assert not torch.allclose(gated, plain)


@pytest.mark.parametrize("fusion", ["none", "metanet"])
def test_cam_spatial_mean_plus_head_bias_is_the_logit(fusion, inputs):
    x, meta = inputs
    model = _model(fusion)
    maps = cam.cam_maps(model, x, meta)
    with torch.no_grad():
        logits = model(x, meta)
    torch.testing.assert_close(maps.mean(dim=(2, 3)) + model.head.bias, logits, rtol=1e-5, atol=1e-5)


def test_target_by_code_or_index_and_refusals_of_wrong_count_or_missing_metadata(inputs):
    x, meta = inputs
    model = _model("metanet")
    a = cam.class_activation_map(model, x, meta, target="mel")
    assert a.classes.tolist() == [0, 0, 0]
    b = cam.class_activation_map(model, x, meta, target=["NV", 2, "df"])
    assert b.classes.tolist() == [1, 2, 5]
    np.testing.assert_allclose(b.probs.sum(axis=1), 1, atol=1e-6)
    with pytest.raises(ValueError, match="targets"):
        cam.class_activation_map(model, x, meta, target=[0, 1])
    with pytest.raises(ValueError, match="metadata"):
        cam.cam_maps(model, x, None)


def test_normalise_cam_clips_negative_evidence_then_divides_each_map_by_its_max():
    c = np.array([[-1.0, 0.0], [1.0, 3.0]])
    np.testing.assert_allclose(cam.normalise_cam(c), [[0, 0], [1 / 3, 1]], atol=1e-7)
    assert cam.normalise_cam(-np.ones((2, 2))).max() == 0  # no positive evidence: all zero, no NaN
    stack = cam.normalise_cam(np.stack([c, 2 * c]))  # each map of a stack on its own
    np.testing.assert_allclose(stack, [[[0, 0], [1 / 3, 1]]] * 2, atol=1e-7)


def _bilinear_half_pixel(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resampling with pixel centres at i + 0.5 (align_corners=False), from first principles: output
    pixel i reads source coordinate (i + 0.5) * in / out - 0.5, clamped at the borders; separable."""

    def along(arr, axis, n_out):
        n_in = arr.shape[axis]
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = src - i0
        shape = [1] * arr.ndim
        shape[axis] = n_out
        lam = lam.reshape(shape)
        return np.take(arr, i0, axis=axis) * (1 - lam) + np.take(arr, i1, axis=axis) * lam

    a = np.asarray(a, dtype=np.float64)
    return along(along(a, -2, out_h), -1, out_w)


def test_upsample_cam_is_half_pixel_bilinear_with_clamped_borders():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 3, 3, 4))  # leading axes kept
    up = cam.upsample_cam(maps, (7, 10))
    assert up.shape == (2, 3, 7, 10) and up.dtype == np.float32
    np.testing.assert_allclose(up, _bilinear_half_pixel(maps, 7, 10), atol=1e-5)
    sq = cam.upsample_cam(maps[0, 0], 8)  # an int size is square
    np.testing.assert_allclose(sq, _bilinear_half_pixel(maps[0, 0], 8, 8), atol=1e-5)
    # a constant map stays constant
    np.testing.assert_allclose(cam.upsample_cam(np.full((2, 2), 0.7), 9), 0.7, atol=1e-6)
    # a ramp 0, 1, 2, 3 upsampled x2: value at output column j is j / 2 - 1/4, clamped to [0, 3]
    ramp = np.tile(np.arange(4.0), (3, 1))
    expected = np.clip(np.arange(8) / 2 - 0.25, 0, 3)
    np.testing.assert_allclose(cam.upsample_cam(ramp, (6, 8)), np.tile(expected, (6, 1)), atol=1e-6)
    np.testing.assert_allclose(expected[:3], [0, 0.25, 0.75])


def test_overlay_blends_the_jet_colour_of_the_normalised_upsampled_map_over_the_image():
    """(1 - alpha) * image + alpha * jet(upsampled ReLU / max map), to uint8 with rounding, by hand."""
    import matplotlib

    c = np.array([[-1.0, 0.0], [1.0, 3.0]])
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
    ov = cam.overlay(img, c, alpha=0.5)
    assert ov.shape == (16, 12, 3) and ov.dtype == np.uint8
    norm = np.maximum(c, 0) / 3
    heat = matplotlib.colormaps["jet"](np.clip(_bilinear_half_pixel(norm, 16, 12), 0, 1))[..., :3]
    ref = np.floor(np.clip(0.5 * img / 255.0 + 0.5 * heat, 0, 1) * 255 + 0.5)
    diff = np.abs(ov.astype(int) - ref.astype(int))
    # float32 map vs float64 here may fall into the neighbouring colormap entry at a few pixels
    assert diff.max() <= 2 and (diff > 0).mean() < 0.02
    assert not np.array_equal(ov[0, 0], ov[-1, -1])  # cold corner vs hot corner
    assert np.array_equal(cam.overlay(img, c, alpha=0.0), img)
    hot = cam.overlay(np.zeros_like(img), c, alpha=1.0)  # alpha 1: the colormap alone; the hot corner is jet(1)
    np.testing.assert_array_equal(hot[-1, -1], np.floor(np.array(matplotlib.colormaps["jet"](1.0)[:3]) * 255 + 0.5))


# ----------------------------------------------------------------------------- records and their maps


def _fake_dataset(n: int = 14, size: int = 72) -> Dataset:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "image_id": [f"ISIC_{i:07d}" for i in range(n)], "lesion_id": [f"L{i}" for i in range(n)],
        "dx": [DX_CODES[i % 7] for i in range(n)], "dx_type": "histo",
        "age": rng.integers(2, 17, n) * 5.0, "sex": ["male", "female"] * (n // 2),
        "localization": ["back", "face"] * (n // 2), "path": [""] * n})
    ds = Dataset(df=df, data_dir=__import__("pathlib").Path("."), kind="real", fingerprint="fake0001")
    ds._built[("images", size, True)] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ds


def _save_run(tmp_path, fusion: str, ds: Dataset, seed: int):
    cfg = RunConfig(backbone="test_resnet", fusion=fusion, meta_features=() if fusion == "none" else
                    ("age", "sex", "localization"), meta_layers={"none": 0, "concat": 0}.get(fusion, 2),
                    fold=0, n_folds=2, image_size=72, crop_size=64, epochs=1, pretrained=False,
                    data_fingerprint=ds.fingerprint)
    model = _model(fusion, seed)
    d = tmp_path / cfg.run_id
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**cfg.to_dict(), "run_id": cfg.run_id}))
    torch.save({"run_id": cfg.run_id, "epoch": 1, "model": model.state_dict(), "history": [{"epoch": 1}],
                "config": cfg.to_dict()}, d / "checkpoint.pt")
    return d, model


def test_load_run_model_rebuilds_the_trained_model(tmp_path, inputs):
    ds = _fake_dataset()
    d, model = _save_run(tmp_path, "metanet", ds, seed=3)
    loaded, cfg = cam.load_run_model(d)
    assert cfg.fusion == "metanet" and not loaded.training
    x, meta = inputs
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, meta), model(x, meta))
    with pytest.raises(FileNotFoundError):
        cam.load_run_model(tmp_path / "nothing")


def test_pair_cams_entries_have_feature_size_maps_targets_and_optional_concat(tmp_path):
    ds = _fake_dataset()
    dn, _ = _save_run(tmp_path, "none", ds, seed=1)
    dm, _ = _save_run(tmp_path, "metanet", ds, seed=2)
    ids = ds.image_ids[:3]
    out = cam.pair_cams({"none": dn, "metanet": dm}, ids, ds)
    assert [o["image"] for o in out] == ids and [o["true"] for o in out] == ["MEL", "NV", "BCC"]
    for o in out:
        assert o["picture"].shape == (64, 64, 3) and o["picture"].dtype == np.uint8
        for f in ("none", "metanet"):
            assert o[f]["cam"].shape == (2, 2)
            assert o[f]["target"] == o[f]["pred"] and 0 < o[f]["p_pred"] <= 1
            assert o[f]["backbone"] == "test_resnet"  # for the figure's title
    assert "concat" not in out[0]
    dc, _ = _save_run(tmp_path, "concat", ds, seed=4)  # all three variants
    three = cam.pair_cams({"none": dn, "concat": dc, "metanet": dm}, ids, ds)
    assert three[0]["concat"]["cam"].shape == (2, 2)
    for a, b in zip(out, three):  # the other two maps are unchanged by the third
        np.testing.assert_array_equal(a["metanet"]["cam"], b["metanet"]["cam"])
    true_maps = cam.pair_cams({"none": dn, "metanet": dm}, ids, ds, target="true")
    assert [o["metanet"]["target"] for o in true_maps] == ["MEL", "NV", "BCC"]
    assert cam.pair_cams({"none": dn, "metanet": dm}, [], ds) == []
    with pytest.raises(ValueError, match="target"):
        cam.pair_cams({"none": dn}, ids, ds, target="best")


def test_run_inputs_and_pair_cams_use_each_ids_cached_centre_crop_metadata_row_and_model_output(tmp_path):
    """For ids out of order: the model's input is the run's cache (image_size, colour constancy) row of the id,
    centre-cropped and normalised with the backbone's mean/std; the metadata is that row's encoding; the
    picture is the uint8 crop; and the reported probabilities are softmax(model(x, meta)) of the trained
    models, recomputed here from the cache array and the metadata frame."""
    from metanet_utils.metadata import encode
    from metanet_utils.models import input_spec

    ds = _fake_dataset()
    rng = np.random.default_rng(9)
    ds._built[("images", 72, False)] = rng.integers(0, 256, (14, 72, 72, 3), dtype=np.uint8)  # decoys: the wrong cache
    ds._built[("images", 64, True)] = rng.integers(0, 256, (14, 64, 64, 3), dtype=np.uint8)
    dn, model_none = _save_run(tmp_path, "none", ds, seed=1)
    dm, model_meta = _save_run(tmp_path, "metanet", ds, seed=2)
    ids = [ds.image_ids[9], ds.image_ids[2], ds.image_ids[5]]
    pos = [9, 2, 5]

    # independent inputs: cache rows, centre 64 of 72 (offset 4), (v / 255 - mean) / std
    crops = np.asarray(ds._built[("images", 72, True)])[pos][:, 4:68, 4:68]
    spec = input_spec("test_resnet")
    mean, std = np.array(spec.mean), np.array(spec.std)
    x_ref = torch.from_numpy(((crops / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
    enc, names = encode(ds.df, features=("age", "sex", "localization"))
    meta_ref = torch.from_numpy(enc[pos])
    ages = ds.df["age"].to_numpy()
    for k, p in enumerate(pos):  # the encoding of the row, by hand: min-max age, one-hot sex and site
        row = ds.df.iloc[p]
        vec = np.zeros(len(names), np.float32)
        vec[0] = (row["age"] - ages.min()) / (ages.max() - ages.min())
        vec[names.index(f"sex={row['sex']}")] = 1
        vec[names.index(f"localization={row['localization']}")] = 1
        np.testing.assert_allclose(meta_ref[k].numpy(), vec, atol=1e-6)

    _, cfg = cam.load_run_model(dm)
    x, meta, pic = cam.run_inputs(cfg, ds, ids)
    torch.testing.assert_close(x, x_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(meta, meta_ref, atol=0, rtol=0)
    np.testing.assert_array_equal(pic, crops)
    _, cfg_none = cam.load_run_model(dn)
    assert cam.run_inputs(cfg_none, ds, ids)[1] is None  # image-only: no metadata

    with torch.no_grad():
        probs = {"none": torch.softmax(model_none(x_ref, None), 1).numpy(),
                 "metanet": torch.softmax(model_meta(x_ref, meta_ref), 1).numpy()}
        maps = {"none": cam.cam_maps(model_none, x_ref).numpy(),
                "metanet": cam.cam_maps(model_meta, x_ref, meta_ref).numpy()}
    out = cam.pair_cams({"none": dn, "metanet": dm}, ids, ds)
    assert [o["image"] for o in out] == ids
    for k, o in enumerate(out):
        y = pos[k] % 7  # _fake_dataset: dx of row i is DX_CODES[i % 7]
        assert o["true"] == CLASS_CODES[y] and DX_CODES[y] == ds.df["dx"].iloc[pos[k]]
        np.testing.assert_array_equal(o["picture"], crops[k])
        for f in ("none", "metanet"):
            pred = int(probs[f][k].argmax())
            assert o[f]["pred"] == o[f]["target"] == CLASS_CODES[pred]
            assert o[f]["p_pred"] == pytest.approx(float(probs[f][k, pred]), abs=1e-5)
            assert o[f]["p_true"] == pytest.approx(float(probs[f][k, y]), abs=1e-5)
            assert o[f]["correct"] == (pred == y)
            np.testing.assert_allclose(o[f]["cam"], maps[f][k, pred], atol=1e-5, rtol=1e-5)
    assert not np.allclose(probs["none"], probs["metanet"])  # two different models were compared
