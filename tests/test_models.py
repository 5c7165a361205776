"""The fusion heads, the backbones and pretrained weights of metanet_utils.models.

Everything runs with random weights and no network: weights "downloaded" are files made here, in the layouts
timm / torchvision cache them. The two big paper backbones are marked slow (run with ``-m slow``).
"""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from metanet_utils import models as M
from metanet_utils.ops.cli import main
from metanet_utils.constants import BACKBONES
from metanet_utils.models import WeightsUnavailable, build_model

TINY = "test_resnet"  # timm's tiny ResNet, C = 96
TINY_HUB = "timm/test_resnet.r160_in1k"
PX = 64


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch):
    """No test depends on the caller's $METANET_WEIGHTS_DIR, and none may reach the network."""
    monkeypatch.delenv("METANET_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(0)


def _inputs(batch: int = 3, meta_dim: int = 17, px: int = PX) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 3, px, px), torch.rand(batch, meta_dim)


def _linears(seq: nn.Module | None) -> list[nn.Linear]:
    return [] if seq is None else [m for m in seq.modules() if isinstance(m, nn.Linear)]


# --------------------------------------------------------------------------------------------------
# The fusion heads
# --------------------------------------------------------------------------------------------------


def test_metanet_multiplies_each_channel_of_the_maps_by_its_gate_before_pooling():
    """metanet: g = sigmoid(W2 relu(W1 m + b1) + b2) written here with F.linear; the head sees mean_hw(F * g)."""
    model = build_model(TINY, "metanet", pretrained=False).eval()
    images, meta = _inputs()
    seen = []
    model.head.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    (l1, l2), head = _linears(model.meta_net), model.head
    with torch.no_grad():
        logits = model(images, meta)
        maps = model.forward_features(images)
        g = torch.sigmoid(F.linear(torch.relu(F.linear(meta, l1.weight, l1.bias)), l2.weight, l2.bias))
        assert maps.shape == (3, 96, 2, 2) and bool(((g > 0) & (g < 1)).all())
        torch.testing.assert_close(model.gate(meta), g)
        gated = maps * g[:, :, None, None]  # channel c of every image times its own gate
        torch.testing.assert_close(seen[0], gated.mean(dim=(2, 3)))
        torch.testing.assert_close(logits, F.linear(gated.mean(dim=(2, 3)), head.weight, head.bias))


def test_only_the_none_fusion_ignores_the_metadata():
    """none ignores the metadata (and accepts None); concat, metanet and metablock depend on it."""
    images, meta = _inputs()
    meta2 = torch.rand_like(meta)
    for fusion in ("none", "concat", "metanet", "metablock"):
        model = build_model(TINY, fusion, pretrained=False).eval()
        with torch.no_grad():
            a, b = model(images, meta), model(images, meta2)
            assert a.shape == (3, 7)
            if fusion == "none":
                torch.testing.assert_close(a, b)
                torch.testing.assert_close(model(images), a)
            else:
                assert not torch.allclose(a, b), fusion


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_k_meta_layers_double_in_width_up_to_C_then_sigmoid_or_relu(k):
    """k metadata layers: widths C/2^(k-1) .. C (k=2: C/2, C), ReLU between; sigmoid (metanet) / ReLU (concat) last;
    the concat head reads C image features + C metadata features."""
    C = 96
    expected = {1: [C], 2: [C // 2, C], 3: [C // 4, C // 2, C], 4: [C // 8, C // 4, C // 2, C]}[k]
    assert M.meta_widths(C, k) == expected
    assert M.meta_widths(2048, k) == {1: [2048], 2: [1024, 2048], 3: [512, 1024, 2048],
                                      4: [256, 512, 1024, 2048]}[k]
    for fusion, last in [("metanet", nn.Sigmoid), ("concat", nn.ReLU)]:
        model = build_model(TINY, fusion, meta_layers=k, pretrained=False)
        lins = _linears(model.meta_net)
        assert [(l.in_features, l.out_features) for l in lins] == list(zip([17] + expected[:-1], expected))
        mods = list(model.meta_net)
        assert isinstance(mods[-1], last)
        assert sum(isinstance(m, nn.ReLU) for m in mods) == (k - 1) + (fusion == "concat")
        assert model.meta_layers == k and model.meta_widths == expected
        assert (model.head.in_features, model.head.out_features) == ((2 * C if fusion == "concat" else C), 7)


def test_concat_feeds_the_pooled_maps_and_the_raw_or_transformed_metadata_to_the_head():
    """concat, k=0: head([mean_hw F, m]), head input C + 17; k=2: head([mean_hw F, relu(W2 relu(W1 m))])."""
    images, meta = _inputs()
    raw = build_model(TINY, "concat", meta_layers=0, pretrained=False).eval()
    assert raw.meta_net is None and raw.head.in_features == 96 + 17
    deep = build_model(TINY, "concat", meta_layers=2, pretrained=False).eval()
    (l1, l2) = _linears(deep.meta_net)
    with torch.no_grad():
        pooled = raw.forward_features(images).mean(dim=(2, 3))
        torch.testing.assert_close(raw(images, meta), raw.head(torch.cat([pooled, meta], dim=1)))
        phi = torch.relu(F.linear(torch.relu(F.linear(meta, l1.weight, l1.bias)), l2.weight, l2.bias))
        pooled = deep.forward_features(images).mean(dim=(2, 3))
        torch.testing.assert_close(deep(images, meta), deep.head(torch.cat([pooled, phi], dim=1)))


def test_default_meta_layers_follow_the_paper():
    """meta_layers=None: metanet 2 (Sec. 2), concat 0 (Table 1 concatenates raw metadata, Sec. 3.5), metablock 1."""
    assert build_model(TINY, "metanet", pretrained=False).meta_widths == [48, 96]
    assert build_model(TINY, "concat", pretrained=False).meta_net is None
    assert build_model(TINY, "none", meta_layers=2, pretrained=False).meta_layers == 0
    assert build_model(TINY, "metablock", pretrained=False).meta_layers == 1


def test_unknown_fusion_metanet_without_layers_and_wrong_metadata_raise_clear_errors():
    """Unknown fusion, metanet with k=0, metadata of the wrong width or missing: clear errors."""
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
    with torch.no_grad():
        out = model(_inputs()[0], torch.rand(3, 1, dtype=torch.float64))
    assert out.shape == (3, 7) and out.dtype == torch.float32


def test_metablock_output_is_sigmoid_of_tanh_features_times_f_b_plus_g_b():
    """metablock (Pacheco & Krohling 2021): f_b, g_b = Linear(17, C) + BN; the head sees sigmoid(tanh(T f_b) + g_b)."""
    model = build_model(TINY, "metablock", pretrained=False).eval()
    mb = model.metablock
    assert (mb.f_b[0].in_features, mb.f_b[0].out_features) == (17, 96) and isinstance(mb.g_b[1], nn.BatchNorm1d)
    images, meta = _inputs()
    with torch.no_grad():
        pooled = model.forward_features(images).mean(dim=(2, 3))
        t = torch.sigmoid(torch.tanh(pooled * mb.f_b(meta)) + mb.g_b(meta))
        torch.testing.assert_close(model(images, meta), model.head(t))
    deeper = build_model(TINY, "metablock", meta_layers=3, pretrained=False)
    assert [l.out_features for l in _linears(deeper.metablock.meta_net)] == [24, 48]
    assert deeper.metablock.f_b[0].in_features == 48


def test_one_sgd_step_updates_backbone_gate_and_head_and_channels_last_keeps_logits():
    """One SGD step updates backbone, gate and head; channels_last gives the same logits."""
    model = build_model(TINY, "metanet", pretrained=False)
    images, meta = _inputs(batch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    F.cross_entropy(model(images, meta), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    changed = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == {"backbone", "meta_net", "head"}
    model.eval()
    with torch.no_grad():
        ref = model(images, meta)
        cl = model.to(memory_format=torch.channels_last)(images.to(memory_format=torch.channels_last), meta)
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# Backbones, names, input sizes
# --------------------------------------------------------------------------------------------------

SLOW = {"vgg19", "densenet161", "senet154", "pnasnet5large"}  # 10-30 s each on 2 busy cores


def test_paper_backbones_report_the_papers_C_on_the_meta_device():
    """All six report the C of constants.BACKBONES (built on the meta device: no memory, no init time); VGG19's
    maps are its convolutional features: fc6/fc7 (timm's pre_logits ConvMlp, 120 M parameters) are dropped."""
    for short, facts in BACKBONES.items():
        with torch.device("meta"):
            bb = M.build_backbone(short, pretrained=False)
        assert (bb.num_features, bb.name) == (facts.channels, facts.model), short
        if short == "vgg19":
            assert isinstance(bb.body.pre_logits, nn.Identity)
            assert sum(p.numel() for p in bb.parameters()) < 21_000_000  # 20.0 M in the convolutions


@pytest.mark.parametrize("short", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in BACKBONES])
def test_paper_backbone_builds_and_its_maps_have_C_channels(short):
    """Each of the six builds with random weights, runs at 64 px, and its maps have the paper's C channels."""
    model = build_model(short, "metanet", pretrained=False).eval()
    images, meta = _inputs(batch=2)
    with torch.no_grad():
        maps = model.forward_features(images)
        logits = model(images, meta)
    assert model.num_features == BACKBONES[short].channels == maps.shape[1]
    assert maps.ndim == 4 and logits.shape == (2, 7)


@pytest.mark.parametrize("name,C", [("test_efficientnet", None), ("resnet10t", 512), ("mobilenetv3_small_100", 576)])
def test_any_timm_model_by_name_reports_the_channels_of_its_maps(name, C):
    """Any timm CNN by name: num_features equals the channels of forward_features."""
    model = build_model(name, "concat", meta_layers=1, pretrained=False).eval()
    with torch.no_grad():
        maps = model.forward_features(torch.randn(2, 3, PX, PX))
        out = model(torch.randn(2, 3, PX, PX), torch.rand(2, 17))
    assert maps.shape[1] == model.num_features and out.shape == (2, 7)
    assert C is None or model.num_features == C


def test_unknown_backbone_raises_one_line_listing_the_six_and_timm():
    """Unknown names (a typo, a tag timm does not know, nothing): one line listing the six, saying timm works."""
    for bad in ("resnet5O", "resnet50.bogus_tag", ""):
        with pytest.raises(ValueError) as info:
            M.resolve_backbone(bad)
        msg = str(info.value)
        assert "\n" not in msg and "timm" in msg and all(short in msg for short in BACKBONES)
    with pytest.raises(ValueError, match="timm model name"):
        build_model("no_such_net", pretrained=False)


def test_short_names_and_paper_spellings_resolve_to_the_pinned_models():
    """Short names and the paper's spellings (any case) build the pinned models."""
    assert {s: b.model for s, b in BACKBONES.items()} == {
        "alexnet": "alexnet", "vgg19": "vgg19.tv_in1k", "resnet50": "resnet50.tv_in1k",
        "densenet161": "densenet161.tv_in1k", "senet154": "legacy_senet154.in1k",
        "pnasnet5large": "pnasnet5large.tf_in1k"}
    for short, b in BACKBONES.items():
        for spelling in (short, b.paper_name, b.paper_name.upper(), b.model):
            assert M.resolve_backbone(spelling) == b.model
    assert M.resolve_backbone("PNASNet-5-Large") == "pnasnet5large.tf_in1k"
    assert M.resolve_backbone("resnet50.a1_in1k") == "resnet50.a1_in1k"


def test_input_spec_is_300_to_224_imagenet_except_pnasnet_441_to_331_at_half():
    """300 -> 224 with ImageNet mean/std, except PNASNet 441 -> 331 with mean = std = 0.5; others 300 -> 224."""
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for short in ("alexnet", "vgg19", "resnet50", "densenet161", "senet154"):
        spec = M.input_spec(short)
        assert (spec.resize, spec.crop, (spec.mean, spec.std)) == (300, 224, imagenet)
    assert tuple(M.input_spec("PNASNet-5")) == (441, 331, (0.5,) * 3, (0.5,) * 3)
    assert tuple(M.input_spec(TINY)) == (300, 224, (0.5,) * 3, (0.5,) * 3)  # timm cfg of test_resnet
    assert M.input_spec("resnet10t").mean == imagenet[0]


def test_channels_last_is_preferred_except_for_senet154():
    """channels_last for plain convnets; NCHW for legacy_senet154 (timm's published numbers)."""
    for short in ("alexnet", "vgg19", "resnet50", "densenet161", "pnasnet5large", TINY):
        assert M.channels_last_preferred(short) is True
    assert M.channels_last_preferred("senet154") is M.channels_last_preferred("legacy_senet154") is False


# --------------------------------------------------------------------------------------------------
# Pretrained weights, offline
# --------------------------------------------------------------------------------------------------


def _tiny_state() -> dict[str, torch.Tensor]:
    """A stand-in for test_resnet's ImageNet weights: a random timm state dict with its classifier."""
    return {k: v.contiguous() for k, v in timm.create_model(TINY, pretrained=False).state_dict().items()}


def _hub_file(folder: Path, repo: str, filename: str) -> Path:
    """Where the Hugging Face hub cache in ``folder`` keeps ``repo``'s file (refs/main -> snapshots/<commit>/)."""
    root, commit = Path(folder) / f"models--{repo.replace('/', '--')}", "0" * 40
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    return root / "snapshots" / commit / filename


def _put_tiny_in_hub_cache(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import save_file

    state = _tiny_state()
    save_file(state, str(_hub_file(folder, TINY_HUB, "model.safetensors")))
    return state


def _put_alexnet(path: Path) -> dict[str, torch.Tensor]:
    from torchvision.models import alexnet

    state = alexnet(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, str(path))
    return state


def _no_download(*args, **kwargs):
    raise AssertionError("a download was attempted")


def _offline_urls(monkeypatch) -> list[str]:
    """torch.hub's URL download (SENet154 through timm, AlexNet through torchvision) fails as offline."""
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return calls


def test_weights_folder_is_read_without_the_network(tmp_path, monkeypatch):
    """A folder in timm's cache layouts (hub cache; a release URL's file) loads through timm / torchvision, the same
    tensors, with every download function failing; $METANET_WEIGHTS_DIR acts as weights_dir."""
    import timm.models._hub as timm_hub

    monkeypatch.setattr(timm_hub, "hf_hub_download", _no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    state = _put_tiny_in_hub_cache(tmp_path)
    model = build_model(TINY, "metanet", pretrained=True, weights_dir=tmp_path)
    loaded = model.backbone.body.state_dict()
    assert len(loaded) > 10 and all(torch.equal(v, state[k]) for k, v in loaded.items())

    alex = _put_alexnet(tmp_path / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("METANET_WEIGHTS_DIR", str(tmp_path))
    bb = M.build_backbone("AlexNet", pretrained=True)
    assert torch.equal(bb.body[0].weight, alex["features.0.weight"])


def test_timms_own_cache_is_used_without_a_weights_folder(tmp_path, monkeypatch):
    """No weights folder: timm's hub cache (HF_HUB_CACHE, read offline) provides the weights."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    state = _put_tiny_in_hub_cache(tmp_path)
    loaded = M.build_backbone(TINY, pretrained=True).body.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())


def test_weights_missing_from_the_folder_is_one_line_saying_how_to_fetch(tmp_path, monkeypatch):
    """A folder without the file -> at once, one line naming the backbone, what it looked for and the fetch command;
    hub weights are looked up in the folder without asking the hub."""
    import timm.models._hub as timm_hub

    monkeypatch.setattr(timm_hub, "hf_hub_download", _no_download)
    urls = _offline_urls(monkeypatch)
    for short, entry in [("resnet50", "models--timm--resnet50.tv_in1k"), ("alexnet", "URLError"),
                         ("senet154", "URLError"), (TINY, "models--timm--test_resnet.r160_in1k")]:
        t0 = time.perf_counter()
        with torch.device("meta"), pytest.raises(WeightsUnavailable) as info:
            build_model(short, "metanet", pretrained=True, weights_dir=tmp_path)
        msg = str(info.value)
        assert time.perf_counter() - t0 < 5 and "\n" not in msg and msg.startswith(f"no pretrained weights for {short}")
        assert f"in {tmp_path}: " in msg and entry in msg and f"weights fetch --weights-dir {tmp_path}" in msg
        assert "pretrained=False" in msg
    assert len(urls) == 2


def test_offline_without_cached_weights_raises_weights_unavailable(tmp_path, monkeypatch):
    """No folder, the hub offline (HF_HUB_OFFLINE) and nothing cached -> WeightsUnavailable, never a random init."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as info:
        build_model(TINY, "metanet", pretrained=True)
    msg = str(info.value)
    assert time.perf_counter() - t0 < 10 and "\n" not in msg and "caches of timm" in msg
    assert "weights fetch --weights-dir DIR" in msg and "METANET_WEIGHTS_DIR" in msg


@pytest.mark.parametrize("short", ["senet154", "alexnet"])
def test_url_weights_offline_raise_weights_unavailable(short, tmp_path, monkeypatch):
    """Weights published as a URL (SENet154 through timm, AlexNet through torchvision), offline: WeightsUnavailable."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = _offline_urls(monkeypatch)
    with torch.device("meta"), pytest.raises(WeightsUnavailable, match="URLError"):
        M.build_backbone(short, pretrained=True)
    assert len(calls) == 1 and calls[0].startswith("https://")


def test_a_corrupt_weights_file_is_reported(tmp_path):
    """A truncated / foreign file in the folder -> WeightsUnavailable with the loader's error and the fix."""
    _hub_file(tmp_path, TINY_HUB, "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match=r"in .*: \w+Error: .*weights fetch"):
        M.build_backbone(TINY, pretrained=True, weights_dir=tmp_path)


@pytest.fixture()
def fake_downloads(tmp_path, monkeypatch):
    """timm's hub download and torch's URL download, simulated: they write locally made files where the real ones
    would (the hub cache layout under cache_dir; the URL's file name under model_dir). Returns the calls."""
    import timm.models._hub as timm_hub

    calls = []

    def hub(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        calls.append((repo_id, filename))
        if filename != "model.safetensors":
            raise AssertionError(filename)
        from safetensors.torch import save_file

        path = _hub_file(Path(cache_dir), repo_id, filename)
        save_file(_tiny_state(), str(path))
        return str(path)

    def url(u, dst, hash_prefix=None, progress=True):
        calls.append((u, hash_prefix))
        _put_alexnet(Path(dst))

    monkeypatch.setattr(timm_hub, "hf_hub_download", hub)
    monkeypatch.setattr(torch.hub, "download_url_to_file", url)
    return calls


def test_fetch_weights_fills_a_folder_that_offline_machines_load(tmp_path, fake_downloads):
    """fetch_weights downloads through timm / torchvision into the folder, keeps what is there on a rerun, and
    build_model(weights_dir=folder) then loads exactly those files."""
    from safetensors.torch import load_file
    from torchvision.models import AlexNet_Weights

    from metanet_utils.ops.weights import fetch_weights

    wd = tmp_path / "weights"
    fetch_weights(wd, [TINY, "alexnet"])
    assert fake_downloads == [(TINY_HUB, "model.safetensors"), (AlexNet_Weights.IMAGENET1K_V1.url, "7be5be79")]
    assert (wd / "alexnet-owt-7be5be79.pth").is_file()
    fetch_weights(wd, [TINY, "alexnet"])
    assert len(fake_downloads) == 2
    state = load_file(str(next((wd / "models--timm--test_resnet.r160_in1k").rglob("model.safetensors"))))
    loaded = build_model(TINY, "none", pretrained=True, weights_dir=wd).backbone.body.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())


def test_cli_weights_fetch_fills_the_folder(tmp_path, fake_downloads, capsys):
    """`python -m metanet_utils weights fetch --weights-dir D --backbones ...` fills D and says how to use it."""
    wd = tmp_path / "w"
    assert main(["weights", "fetch", "--weights-dir", str(wd), "--backbones", TINY]) == 0
    assert fake_downloads == [(TINY_HUB, "model.safetensors")] and "METANET_WEIGHTS_DIR" in capsys.readouterr().out


def test_random_backbone_draws_the_same_weights_as_timm_without_a_classifier():
    """A run's weights depend only on its seed: a random backbone is timm's model built without a classifier (one
    built and dropped would draw from the RNG and change every weight after it, and so an old record's numbers)."""
    torch.manual_seed(0)
    ours = build_model("test_resnet", "metanet", meta_dim=17, meta_layers=2, pretrained=False)
    torch.manual_seed(0)
    ref = timm.create_model("test_resnet", num_classes=0)
    for (name, a), b in zip(ours.backbone.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
