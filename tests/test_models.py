"""Backbones, fusion heads and pretrained-weight handling of metanet_utils.models.

Everything runs with random weights and no network: the hub / URL downloads are simulated by
monkeypatching. The big paper backbones are marked slow (run with ``-m slow``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from metanet_utils import models as M
from metanet_utils.models import WeightsUnavailable, build_model

TINY = "test_resnet"  # timm's tiny ResNet, C = 96
PX = 64


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch):
    """No test depends on the caller's $METANET_WEIGHTS_DIR."""
    monkeypatch.delenv("METANET_WEIGHTS_DIR", raising=False)
    torch.manual_seed(0)


def _inputs(batch: int = 3, meta_dim: int = 17, px: int = PX) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 3, px, px), torch.rand(batch, meta_dim)


def _linears(seq: nn.Module | None) -> list[nn.Linear]:
    return [] if seq is None else [m for m in seq.modules() if isinstance(m, nn.Linear)]


# --------------------------------------------------------------------------------------------------
# Fusion heads
# --------------------------------------------------------------------------------------------------


def test_metanet_logits_are_the_head_of_pooled_maps_times_the_gate():
    """metanet: logits == head(mean_hw(forward_features * gate)); gating maps == gating the pooled vector."""
    model = build_model(TINY, "metanet", pretrained=False).eval()
    images, meta = _inputs()
    with torch.no_grad():
        logits = model(images, meta)
        maps = model.forward_features(images)
        gate = model.gate(meta)
        assert maps.shape == (3, model.num_features, 2, 2) and gate.shape == (3, model.num_features)
        gated_then_pooled = (maps * gate[:, :, None, None]).mean(dim=(2, 3))
        pooled_then_gated = maps.mean(dim=(2, 3)) * gate
        torch.testing.assert_close(model.head(gated_then_pooled), logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(gated_then_pooled, pooled_then_gated, atol=1e-6, rtol=1e-5)


def test_metanet_gate_is_a_sigmoid_in_the_open_unit_interval_per_channel():
    """metanet gates are sigmoid outputs: strictly inside (0, 1), one per channel."""
    model = build_model(TINY, "metanet", pretrained=False).eval()
    with torch.no_grad():
        g = model.gate(torch.randn(64, 17) * 3)
    assert g.shape == (64, model.num_features)
    assert bool((g > 0).all()) and bool((g < 1).all())
    assert isinstance(model.meta_net[-1], nn.Sigmoid)


def test_only_the_none_fusion_ignores_the_metadata():
    """none ignores the metadata (and accepts None); concat, metanet and metablock depend on it."""
    images, meta = _inputs()
    meta2 = torch.rand_like(meta)
    for fusion, uses_meta in [("none", False), ("concat", True), ("metanet", True), ("metablock", True)]:
        model = build_model(TINY, fusion, pretrained=False).eval()
        with torch.no_grad():
            a, b = model(images, meta), model(images, meta2)
            assert a.shape == (3, 7)
            if uses_meta:
                assert not torch.allclose(a, b), fusion
            else:
                torch.testing.assert_close(a, b)
                torch.testing.assert_close(model(images), a)
                torch.testing.assert_close(model(images, None), a)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_k_meta_layers_double_in_width_up_to_C_then_sigmoid_or_relu(k):
    """k metadata layers: widths C/2^(k-1) .. C (k=2: C/2, C), ReLU between; sigmoid (metanet) / ReLU (concat) last."""
    C = 96
    expected = {1: [C], 2: [C // 2, C], 3: [C // 4, C // 2, C], 4: [C // 8, C // 4, C // 2, C]}[k]
    assert M.meta_widths(C, k) == expected
    assert M.meta_widths(2048, k) == {1: [2048], 2: [1024, 2048], 3: [512, 1024, 2048],
                                      4: [256, 512, 1024, 2048]}[k]
    for fusion, last in [("metanet", nn.Sigmoid), ("concat", nn.ReLU)]:
        model = build_model(TINY, fusion, meta_layers=k, pretrained=False)
        lins = _linears(model.meta_net)
        assert len(lins) == k
        assert [l.out_features for l in lins] == expected
        assert [l.in_features for l in lins] == [17] + expected[:-1]
        mods = list(model.meta_net)
        assert isinstance(mods[-1], last)
        n_relu = sum(isinstance(m, nn.ReLU) for m in mods)
        assert n_relu == (k - 1) + (1 if fusion == "concat" else 0)
        assert model.meta_layers == k and model.meta_widths == expected
        head_in = C + C if fusion == "concat" else C
        assert model.head.in_features == head_in and model.head.out_features == 7


def test_concat_with_k0_feeds_the_raw_metadata_to_the_head():
    """concat with meta_layers=0: no metadata layers, head input = C + meta_dim."""
    model = build_model(TINY, "concat", meta_layers=0, pretrained=False).eval()
    assert model.meta_net is None
    assert model.head.in_features == model.num_features + 17
    images, meta = _inputs()
    with torch.no_grad():
        maps = model.forward_features(images)
        expected = model.head(torch.cat([maps.mean(dim=(2, 3)), meta], dim=1))
        torch.testing.assert_close(model(images, meta), expected, atol=1e-5, rtol=0)


def test_default_meta_layers_follow_the_paper():
    """meta_layers=None: metanet 2 (Sec. 2), concat 0 (Table 1 concatenates raw metadata, Sec. 3.5)."""
    assert build_model(TINY, "metanet", pretrained=False).meta_widths == [48, 96]
    assert build_model(TINY, "concat", pretrained=False).meta_net is None
    assert build_model(TINY, "none", pretrained=False).meta_layers == 0
    assert build_model(TINY, "metablock", pretrained=False).meta_layers == 1


def test_unknown_fusion_metanet_without_layers_and_wrong_metadata_raise_clear_errors():
    """Unknown fusion, metanet with k=0 and metadata of the wrong width are clear errors."""
    with pytest.raises(ValueError, match="unknown fusion"):
        build_model(TINY, "gate", pretrained=False)
    with pytest.raises(ValueError, match="meta_layers >= 1"):
        build_model(TINY, "metanet", meta_layers=0, pretrained=False)
    model = build_model(TINY, "metanet", meta_dim=3, pretrained=False)
    images, meta = _inputs(meta_dim=17)
    with pytest.raises(ValueError, match="meta_dim=3"):
        model(images, meta)
    with pytest.raises(ValueError, match="needs the metadata"):
        model(images)
    with pytest.raises(AttributeError):
        build_model(TINY, "concat", pretrained=False).gate(meta)


def test_one_column_metadata_works_and_float64_metadata_is_cast_to_float32():
    """Table 3 subsets: meta_dim 1 (age only) works; float64 metadata is cast to the model's dtype."""
    model = build_model(TINY, "metanet", meta_dim=1, pretrained=False).eval()
    images, _ = _inputs()
    with torch.no_grad():
        out = model(images, torch.rand(3, 1, dtype=torch.float64))
    assert out.shape == (3, 7) and out.dtype == torch.float32


def test_metablock_output_is_sigmoid_of_tanh_features_times_f_b_plus_g_b():
    """metablock (Pacheco & Krohling 2021): f_b, g_b = Linear(meta_dim, C) + BN; output sigmoid(tanh(T f_b) + g_b)."""
    model = build_model(TINY, "metablock", pretrained=False).eval()
    C = model.num_features
    mb = model.metablock
    assert isinstance(mb.f_b[0], nn.Linear) and (mb.f_b[0].in_features, mb.f_b[0].out_features) == (17, C)
    assert isinstance(mb.g_b[1], nn.BatchNorm1d)
    images, meta = _inputs()
    with torch.no_grad():
        pooled = model.forward_features(images).mean(dim=(2, 3))
        t = torch.sigmoid(torch.tanh(pooled * mb.f_b(meta)) + mb.g_b(meta))
        torch.testing.assert_close(model(images, meta), model.head(t), atol=1e-5, rtol=0)
    deeper = build_model(TINY, "metablock", meta_layers=3, pretrained=False)
    assert [l.out_features for l in _linears(deeper.metablock.meta_net)] == [24, 48]
    assert deeper.metablock.f_b[0].in_features == 48
    assert not model.cam_is_exact


@pytest.mark.parametrize("fusion", ["none", "metanet", "concat"])
def test_cam_maps_and_class_weights_reproduce_the_logits(fusion):
    """CAM: sum_hw(maps * class weights) / HW + bias == logits (none, metanet); concat adds the metadata term."""
    model = build_model(TINY, fusion, pretrained=False).eval()
    images, meta = _inputs(px=96)
    with torch.no_grad():
        maps = model.feature_maps_for_cam(images, meta)  # B x C x H x W
        w = model.classifier_weight_for_cam()  # K x C
        assert w.shape == (7, model.num_features)
        cam = torch.einsum("kc,bchw->bkhw", w, maps)
        hw = maps.shape[2] * maps.shape[3]
        from_cam = cam.sum(dim=(2, 3)) / hw + model.head.bias
        logits = model(images, meta)
        if fusion == "concat":
            from_cam = from_cam + meta @ model.head.weight[:, model.num_features:].T
        torch.testing.assert_close(from_cam, logits, atol=1e-5, rtol=0)
        if fusion == "metanet":
            raw = model.forward_features(images)
            torch.testing.assert_close(maps, raw * model.gate(meta)[:, :, None, None])


def test_dropout_before_the_head_masks_features_in_train_mode_only():
    """drop_rate p: in train mode the head sees the gated pooled features with each element either zeroed or
    scaled by 1 / (1 - p) (a new mask per pass, so two seeds give two outputs); in eval mode the head sees them
    unchanged and the output does not depend on the seed. drop_rate 0 (the default) adds no dropout at all."""
    p = 0.5
    model = build_model(TINY, "metanet", drop_rate=p, pretrained=False)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == p
    images, meta = _inputs(batch=8)
    seen: list[torch.Tensor] = []
    model.head.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return model(images, meta)

    model.train()
    with torch.no_grad():  # train mode: BatchNorm uses the batch's statistics, the same in every pass
        x = model.forward_features(images).mean(dim=(2, 3)) * model.gate(meta)
    a, b, a_again = run(1), run(2), run(1)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, a_again, rtol=0, atol=0)
    for z in seen:
        kept = z != 0
        torch.testing.assert_close(z[kept], x[kept] / (1 - p), rtol=1e-5, atol=1e-6)
        assert 0.35 < 1 - kept.float().mean().item() < 0.65  # 768 draws at p = 0.5
    assert not torch.equal(seen[0] != 0, seen[1] != 0)
    torch.testing.assert_close(a, seen[0] @ model.head.weight.T + model.head.bias, rtol=1e-5, atol=1e-5)

    model.eval()
    seen.clear()
    e1, e2 = run(1), run(2)
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)
    assert not torch.allclose(e1, a)
    with torch.no_grad():
        x_eval = model.forward_features(images).mean(dim=(2, 3)) * model.gate(meta)
    torch.testing.assert_close(seen[0], x_eval, rtol=0, atol=0)
    torch.testing.assert_close(e1, model.head(x_eval), atol=1e-5, rtol=0)

    plain = build_model(TINY, "metanet", pretrained=False).train()
    assert isinstance(plain.dropout, nn.Identity)
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in plain.modules())
    torch.manual_seed(1)
    with torch.no_grad():
        c = plain(images, meta)
    torch.manual_seed(2)
    with torch.no_grad():
        torch.testing.assert_close(plain(images, meta), c, rtol=0, atol=0)


def test_parameter_groups_cover_every_parameter_once():
    """parameter_groups: backbone + fusion head, each parameter exactly once, separate lrs."""
    model = build_model(TINY, "concat", meta_layers=2, pretrained=False)
    groups = model.parameter_groups(1e-3, backbone_lr=1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    torch.optim.SGD(groups, lr=1e-3, momentum=0.9, weight_decay=1e-4)


def test_one_sgd_step_updates_backbone_gate_and_head_and_channels_last_keeps_logits():
    """One SGD step updates backbone, gate and head; channels_last gives the same logits."""
    model = build_model(TINY, "metanet", pretrained=False)
    images, meta = _inputs(batch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    nn.functional.cross_entropy(model(images, meta), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    names = [n for n, _ in model.named_parameters()]
    for prefix in ("backbone.", "meta_net.", "head."):
        assert any(c for n, c in zip(names, changed) if n.startswith(prefix)), prefix
    model.eval()
    with torch.no_grad():
        ref = model(images, meta)
        cl = model.to(memory_format=torch.channels_last)(images.to(memory_format=torch.channels_last), meta)
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)


def test_describe_is_one_line_naming_metadata_widths_and_C():
    """Every model exposes fusion, backbone_name, num_features and a one-line description."""
    model = build_model("Resnet10T".lower(), "metanet", pretrained=False)
    assert (model.fusion, model.backbone_name, model.num_features) == ("metanet", "resnet10t", 512)
    text = model.describe()
    assert "\n" not in text and "17->256->512, sigmoid" in text and "C=512" in text


# --------------------------------------------------------------------------------------------------
# Backbones, names, input specs
# --------------------------------------------------------------------------------------------------

PAPER_C = {"alexnet": 256, "vgg19": 512, "resnet50": 2048, "densenet161": 2208, "senet154": 2048,
           "pnasnet5large": 4320}
SLOW = {"senet154", "pnasnet5large"}  # 90-115 M parameters, seconds per forward on 2 busy cores


def test_paper_backbones_report_the_papers_C_on_the_meta_device():
    """All six report the paper's C (built on the meta device: no memory, no init time)."""
    for alias, C in PAPER_C.items():
        with torch.device("meta"):
            bb = M.build_backbone(alias, pretrained=False)
        assert bb.num_features == C, alias
        assert bb.name == M.BACKBONE_ALIASES[alias]


@pytest.mark.parametrize(
    "alias", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in M.PAPER_BACKBONES]
)
def test_paper_backbone_builds_and_reports_channels(alias):
    """Each of the six backbones builds with random weights, runs at 64 px and reports the paper's C."""
    t0 = time.perf_counter()
    model = build_model(alias, "metanet", pretrained=False).eval()
    images, meta = _inputs(batch=2)
    with torch.no_grad():
        maps = model.forward_features(images)
        logits = model(images, meta)
    assert model.num_features == PAPER_C[alias] == maps.shape[1]
    assert maps.ndim == 4 and logits.shape == (2, 7)
    assert model.backbone_name == M.BACKBONE_ALIASES[alias]
    if alias == "vgg19":  # the maps are the conv features; fc6/fc7 (timm's pre_logits ConvMlp) are dropped
        assert isinstance(model.backbone.body.pre_logits, nn.Identity)
        assert sum(p.numel() for p in model.backbone.parameters()) < 21_000_000  # 20.0 M conv, no 120 M fc
    print(f"{alias}: C={model.num_features} maps={tuple(maps.shape)} {time.perf_counter() - t0:.1f}s")


@pytest.mark.parametrize("name,C", [("test_efficientnet", None), ("resnet10t", 512),
                                    ("mobilenetv3_small_100", 576)])
def test_any_timm_model_by_name_reports_the_channels_of_its_maps(name, C):
    """Any timm CNN by name: num_features equals the channels of forward_features."""
    model = build_model(name, "concat", meta_layers=1, pretrained=False).eval()
    with torch.no_grad():
        maps = model.forward_features(torch.randn(2, 3, PX, PX))
        out = model(torch.randn(2, 3, PX, PX), torch.rand(2, 17))
    assert maps.shape[1] == model.num_features and out.shape == (2, 7)
    if C is not None:
        assert model.num_features == C


def test_unknown_backbone_raises_one_line_listing_the_aliases_and_timm():
    """Unknown names: one-line ValueError listing the six aliases and saying any timm model works."""
    for bad in ("resnet5O", "resnet50.bogus_tag", ""):
        with pytest.raises(ValueError) as info:
            M.resolve_backbone(bad)
        msg = str(info.value)
        assert "\n" not in msg
        for alias in M.PAPER_BACKBONES:
            assert alias in msg
        assert "timm" in msg
    with pytest.raises(ValueError, match="timm model name"):
        build_model("no_such_net", pretrained=False)


def test_aliases_map_to_pinned_timm_names_and_paper_spellings_round_trip():
    """Aliases map to the pinned timm names; the paper's spellings are accepted and reported."""
    assert M.BACKBONE_ALIASES == {
        "alexnet": "alexnet", "vgg19": "vgg19.tv_in1k", "resnet50": "resnet50.tv_in1k",
        "densenet161": "densenet161.tv_in1k", "senet154": "legacy_senet154.in1k",
        "pnasnet5large": "pnasnet5large.tf_in1k",
    }
    assert list(M.DISPLAY_NAMES.values()) == ["AlexNet", "VGG19", "ResNet50", "DenseNet161", "SENet154",
                                              "PNASNet-5"]
    for alias, shown in M.DISPLAY_NAMES.items():
        assert M.resolve_backbone(shown) == M.BACKBONE_ALIASES[alias]
        assert M.display_name(alias) == shown == M.display_name(M.BACKBONE_ALIASES[alias])
    assert M.resolve_backbone("resnet50.a1_in1k") == "resnet50.a1_in1k"
    assert M.display_name("mobilenetv3_small_100") == "mobilenetv3_small_100"


def test_input_spec_is_300_to_224_imagenet_except_pnasnet_441_to_331_at_half():
    """300 -> 224 with ImageNet mean/std, except PNASNet 441 -> 331 with mean = std = 0.5."""
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for alias in ("alexnet", "vgg19", "resnet50", "densenet161", "senet154"):
        spec = M.input_spec(alias)
        assert (spec.resize, spec.crop) == (300, 224)
        assert (spec.mean, spec.std) == imagenet
    p = M.input_spec("PNASNet-5")
    assert (p.resize, p.crop, p.mean, p.std) == (441, 331, (0.5,) * 3, (0.5,) * 3)
    t = M.input_spec(TINY)  # timm cfg of test_resnet: mean = std = 0.5
    assert (t.resize, t.crop, t.mean, t.std) == (300, 224, (0.5,) * 3, (0.5,) * 3)
    assert M.input_spec("resnet10t").mean == imagenet[0]


def test_channels_last_is_preferred_except_for_senet154():
    """channels_last for plain convnets; NCHW for legacy_senet154 (timm's published numbers)."""
    for alias in ("alexnet", "vgg19", "resnet50", "densenet161", "pnasnet5large", TINY):
        assert M.channels_last_preferred(alias) is True
    assert M.channels_last_preferred("senet154") is False
    assert M.channels_last_preferred("legacy_senet154") is False


def test_importing_models_imports_neither_timm_nor_torchvision():
    """Importing the module neither imports timm nor touches the network or the weights folder."""
    code = "import sys, metanet_utils.models as m; print('timm' in sys.modules, 'torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------------------------------
# Pretrained weights (offline)
# --------------------------------------------------------------------------------------------------


def _save_tiny_timm_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A stand-in for test_resnet's hub file: a random timm state dict with its ImageNet classifier."""
    import timm
    from safetensors.torch import save_file

    net = timm.create_model(TINY, pretrained=False)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file(state, str(path))
    return path, state


def _save_alexnet_weights(path: Path) -> dict[str, torch.Tensor]:
    from torchvision.models import alexnet

    state = alexnet(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, str(path))
    return state


def test_weights_dir_missing_file_lists_expected_path(tmp_path):
    """weights_dir without the file -> WeightsUnavailable naming the expected file and the fetch command."""
    for alias, fname in [("resnet50", "resnet50.tv_in1k.safetensors"), ("alexnet", "alexnet-owt-7be5be79.pth"),
                         ("senet154", "legacy_senet154.in1k.pth"), (TINY, "test_resnet.r160_in1k")]:
        with pytest.raises(WeightsUnavailable) as info:
            build_model(alias, "metanet", pretrained=True, weights_dir=tmp_path)
        msg = str(info.value)
        assert str(tmp_path / fname) in msg
        assert "python -m metanet_utils weights fetch --weights-dir" in msg
        assert "METANET_WEIGHTS_DIR" in msg and "pretrained=False" in msg


def test_weights_dir_env_var_acts_as_weights_dir_and_random_init_never_looks(tmp_path, monkeypatch):
    """$METANET_WEIGHTS_DIR acts as weights_dir; pretrained=False never looks for weights."""
    monkeypatch.setenv("METANET_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="METANET_WEIGHTS_DIR"):
        M.build_backbone("resnet50", pretrained=True)
    assert not M.weights_available("resnet50")
    assert M.build_backbone(TINY, pretrained=False).num_features == 96


def test_hub_offline_raises_weights_unavailable(tmp_path, monkeypatch):
    """No weights_dir, Hugging Face hub offline (HF_HUB_OFFLINE) and nothing cached -> WeightsUnavailable."""
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        build_model(TINY, "metanet", pretrained=True)
    assert time.perf_counter() - t0 < 10
    msg = str(info.value)
    assert "timm/test_resnet.r160_in1k" in msg and "weights fetch" in msg and "METANET_WEIGHTS_DIR" in msg
    assert not M.weights_available(TINY)


def test_hub_download_failure_raises_weights_unavailable(tmp_path, monkeypatch):
    """A failing hub download (any error) becomes WeightsUnavailable, never a random init."""
    import huggingface_hub

    def boom(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    with pytest.raises(WeightsUnavailable, match="Name or service not known"):
        build_model("resnet50", "none", pretrained=True)


@pytest.mark.parametrize("alias", ["senet154", "alexnet"])
def test_url_download_failure_raises_weights_unavailable(alias, tmp_path, monkeypatch):
    """URL-hosted weights (SENet154 from timm's releases, AlexNet from torchvision) offline -> WeightsUnavailable."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailable) as info:
        M.build_backbone(alias, pretrained=True)
    assert len(calls) == 1 and calls[0].startswith("https://")
    assert "weights fetch" in str(info.value)
    assert not list((tmp_path / "torch").rglob("*.part"))


def test_weights_dir_file_is_loaded(tmp_path):
    """A file in weights_dir goes through timm's loader (pretrained_cfg_overlay file=) / torchvision's."""
    src, state = _save_tiny_timm_weights(tmp_path / "src")
    wd = tmp_path / "weights"
    wd.mkdir()
    os.replace(src, wd / "test_resnet.r160_in1k.safetensors")
    model = build_model(TINY, "metanet", pretrained=True, weights_dir=wd)
    loaded = model.backbone.body.state_dict()
    shared = [k for k in loaded if k in state]
    assert len(shared) > 10
    for k in shared:
        assert torch.equal(loaded[k], state[k]), k
    assert M.weights_available(TINY, wd)

    alex = _save_alexnet_weights(wd / "alexnet-owt-7be5be79.pth")
    bb = M.build_backbone("alexnet", pretrained=True, weights_dir=wd)
    assert torch.equal(bb.body[0].weight, alex["features.0.weight"])


def test_corrupt_weights_file_is_reported(tmp_path):
    """A truncated / foreign file in weights_dir -> WeightsUnavailable saying to fetch it again."""
    (tmp_path / "test_resnet.r160_in1k.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="fetch it again"):
        M.build_backbone(TINY, pretrained=True, weights_dir=tmp_path)


def test_fetch_weights_with_simulated_downloads(tmp_path, monkeypatch):
    """fetch_weights downloads hub and URL weights into the folder under the expected names and verifies them."""
    import huggingface_hub

    src, _ = _save_tiny_timm_weights(tmp_path / "hub")
    hub_calls = []

    def fake_hf(repo_id, filename, revision=None, local_dir=None, **kwargs):
        hub_calls.append((repo_id, filename))
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
        return str(dest)

    def fake_url(url, dst, hash_prefix=None, progress=True):
        assert url == M.ALEXNET_URL and hash_prefix == "7be5be79"
        _save_alexnet_weights(Path(dst))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_url)
    wd = tmp_path / "weights"
    got = M.fetch_weights(wd, [TINY, "alexnet"], verbose=False)
    assert got == {TINY: wd / "test_resnet.r160_in1k.safetensors", "alexnet": wd / "alexnet-owt-7be5be79.pth"}
    assert hub_calls == [("timm/test_resnet.r160_in1k", "model.safetensors")]
    assert sorted(p.name for p in wd.iterdir()) == ["alexnet-owt-7be5be79.pth", "test_resnet.r160_in1k.safetensors"]
    # a second run keeps what is there
    M.fetch_weights(wd, [TINY], verbose=False, verify=False)
    assert len(hub_calls) == 1
    assert build_model(TINY, "none", pretrained=True, weights_dir=wd).num_features == 96


def test_weights_filenames_are_the_timm_name_with_tag_or_torchvision_file():
    """Expected names in a weights folder: <timm name with tag>.safetensors|.pth; torchvision's AlexNet file."""
    assert M.weights_filenames("senet154") == ["legacy_senet154.in1k.pth", "legacy_senet154.in1k.safetensors"]
    assert M.weights_filenames("resnet10t")[0] == "resnet10t.c3_in1k.safetensors"
    assert M.weights_filenames("AlexNet")[0] == "alexnet-owt-7be5be79.pth"
