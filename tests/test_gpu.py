"""GPU checks (``pytest -m gpu``; run by ``bench/gpu_check.sh``): the training engine on CUDA.

* a whole run (``train_run``) on CUDA with bf16 autocast and channels_last, interrupted and resumed,
  writes a complete record;
* batched augmentation gives the same images on CUDA as on the CPU for the same random parameters;
* the device-resident image cache: upload, training and evaluation straight from device memory;
* evaluation in bf16 agrees with fp32;
* the opt-in fast paths (off by default until a dated GPU record shows them correct and faster): a
  training step replayed from a CUDA graph computes what the eager step computes, a whole run with CUDA
  graphs (captured again at the lr milestone) matches its eager twin, and runs trained together (one
  CUDA stream each, eager or with graphs) match the runs trained alone.

Every test skips without CUDA. ``METANET_GPU_TESTS_ON_CPU=1`` runs them on the CPU instead (slowly;
only to check the tests themselves on a machine without a GPU).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

pytestmark = pytest.mark.gpu


@pytest.fixture()
def dev() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("METANET_GPU_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("needs a CUDA GPU (METANET_GPU_TESTS_ON_CPU=1 runs these tests on the CPU)")


@pytest.fixture()
def small_dataset(isolated_root, real_data_dir):
    """About 300 real images (the HAM10000 copy of conftest's ``real_data_dir``)."""
    from metanet_utils.dataset import open_dataset

    return open_dataset(real_data_dir, max_images=300)


def _fixed_rand(seed: int):
    """A stand-in for ``torch.rand`` drawing from one CPU stream, then moved to the asked device."""
    real_rand = torch.rand
    src = torch.Generator().manual_seed(seed)

    def rand(*size, device=None, generator=None, dtype=None, **kw):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        return real_rand(*size, generator=src, dtype=dtype or torch.float32).to(device or "cpu")

    return rand


def _smooth_batch(b: int, s: int, seed: int = 0) -> torch.Tensor:
    """uint8 B x S x S x 3 images with structure at several scales (not white noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, s // 8, s // 8, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    img = 0.8 * img + 0.2 * torch.rand(b, 3, s, s, generator=g)
    return (img * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# --------------------------------------------------------------------------- a whole run


def test_train_run_bf16_channels_last_writes_a_complete_record(dev, small_dataset, isolated_root):
    from metanet_utils.config import RunConfig
    from metanet_utils.evaluate import load_record
    from metanet_utils.train import RECORD_FILES, is_complete, record_dir, train_run

    ds = small_dataset
    cfg = RunConfig(backbone="test_resnet", fusion="metanet", n_folds=2, fold=1, epochs=2, image_size=64,
                    crop_size=56, batch_size=32, lr=0.01, pretrained=False, precision="bf16", channels_last="on",
                    data_kind=ds.kind, data_fingerprint=ds.fingerprint)
    first = train_run(cfg, ds, device=str(dev), progress=False, stop_after_epochs=1)
    assert first.get("interrupted") and first["epochs_done"] == 1
    assert not is_complete(record_dir(cfg))

    m = train_run(cfg, ds, device=str(dev), progress=False)  # resumes from the epoch-1 checkpoint
    run = record_dir(cfg)
    assert is_complete(run)
    for name in (*RECORD_FILES, "manifest.json"):
        assert (run / name).is_file(), name
    assert not (run.parent / ".work" / cfg.run_id).exists()
    assert m["epochs_done"] == 2
    assert m["precision"] == "bfloat16"
    assert m["channels_last"] is (dev.type == "cuda")
    assert m["execution"]["cuda_graphs"] is False and m["execution"]["trained_together"] is False  # the default
    if dev.type == "cuda":
        assert torch.cuda.get_device_name(dev) in m["device"]
    assert 0.0 <= m["mcr"] <= 1.0 and m["images_per_s"] > 0
    assert m["n_val"] + m["n_train"] == len(ds.df)

    hist = pd.read_csv(run / "history.csv")
    assert list(hist["epoch"]) == [1, 2]
    assert np.isfinite(hist[["train_loss", "val_loss", "val_mcr"]].to_numpy()).all()
    pred = pd.read_csv(run / "predictions.csv")
    assert list(pred.columns) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    probs = pred.iloc[:, 1:].to_numpy()
    assert len(pred) == m["n_val"] and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    rec = load_record(run)
    assert rec["scores"]["mcr"] == pytest.approx(m["mcr"], abs=1e-6)
    assert json.loads((run / "config.json").read_text())["run_id"] == cfg.run_id

    again = train_run(cfg, ds, device=str(dev), progress=False)  # complete: read back, not retrained
    assert again == json.loads((run / "metrics.json").read_text())


# --------------------------------------------------------------------------- augmentation


def test_batch_augment_on_the_device_equals_the_cpu_for_the_same_parameters(dev, monkeypatch):
    from metanet_utils.augment import BatchAugment

    x = _smooth_batch(24, 96)
    aug = BatchAugment(crop=80)  # ImageNet mean/std, rotation 30, jitter 0.2, both flips
    out = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # affine_grid is a matmul: full fp32 on both sides
    try:
        for where in ("cpu", dev):
            with monkeypatch.context() as mp:
                mp.setattr(torch, "rand", _fixed_rand(123))  # the same random parameters on both devices
                out[str(where)] = aug(x.to(where), train=True, generator=None).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    a, b = out["cpu"], out[str(dev)]
    assert a.shape == b.shape == (24, 3, 80, 80)
    diff = (a - b).abs()
    assert float(diff.max()) < 2e-3, float(diff.max())
    assert float(diff.mean()) < 2e-5, float(diff.mean())
    # evaluation (centre crop) is exact
    torch.testing.assert_close(aug(x.to(dev), train=False).cpu(), aug(x, train=False), atol=1e-6, rtol=0)
    # the real path: the device's own generator, per-sample parameters, reproducible with the seed
    gen = lambda: torch.Generator(device=dev).manual_seed(5)  # noqa: E731
    xs = x[:1].repeat(8, 1, 1, 1).to(dev)
    r1, r2 = aug(xs, train=True, generator=gen()), aug(xs, train=True, generator=gen())
    torch.testing.assert_close(r1, r2)
    assert r1.device.type == dev.type and r1.dtype == torch.float32
    assert min(float((r1[0] - r1[i]).abs().mean()) for i in range(1, 8)) > 1e-3


# --------------------------------------------------------------------------- the device-resident cache


def _cache_arrays(n: int = 96, s: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 7
    # a class is a colour level plus noise: learnable in a few steps
    base = (labels * 30 + 30).astype(np.int64)[:, None, None, None]
    images = np.clip(base + rng.integers(-20, 21, size=(n, s, s, 3)), 0, 255).astype(np.uint8)
    meta = rng.random((n, 17), dtype=np.float32)
    folds = np.arange(n) % 3
    return images, meta, labels, folds


def _tiny(dev, channels_last=False):
    from metanet_utils.models import build_model

    torch.manual_seed(0)
    model = build_model("test_resnet", "metanet", pretrained=False).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def test_device_resident_cache_trains_and_evaluates_from_device_memory(dev, monkeypatch):
    from metanet_utils.augment import BatchAugment
    from metanet_utils.config import RunConfig
    from metanet_utils.train import DeviceData, autocast_dtype, evaluate, train_one_epoch

    images, meta, labels, folds = _cache_arrays()
    data = DeviceData.build(images, meta, labels, folds, 0, [f"ISIC_{i:07d}" for i in range(len(labels))], dev)
    assert data.images.device.type == dev.type and data.images.dtype == torch.uint8
    assert torch.equal(data.images.cpu(), torch.from_numpy(images))
    for t in (data.meta, data.labels, data.train_idx, data.val_idx):
        assert t.device.type == dev.type
    assert len(data.val_idx) == int((folds == 0).sum()) and len(data.train_idx) == int((folds != 0).sum())
    assert data.val_ids == [f"ISIC_{i:07d}" for i in np.flatnonzero(folds == 0)]

    cl = dev.type == "cuda"
    amp = autocast_dtype("auto", dev)
    assert amp == (torch.bfloat16 if dev.type == "cuda" else None)
    model = _tiny(dev, channels_last=cl)
    aug = BatchAugment(crop=40, mean=(0.5,) * 3, std=(0.25,) * 3)
    cfg = RunConfig(backbone="test_resnet", batch_size=16, image_size=48, crop_size=40, pretrained=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    rows = [train_one_epoch(model, data, aug, crit, opt, cfg, e, dev, amp, cl) for e in range(3)]
    for r in rows:
        assert np.isfinite(r["train_loss"]) and r["images_per_s"] > 0 and r["epoch_time_s"] > 0
    probs, val_loss = evaluate(model, data, aug, dev, amp, cl, criterion=crit)
    assert probs.shape == (len(data.val_idx), 7) and np.isfinite(val_loss)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)

    if dev.type == "cuda":  # the cache must fit: a clear error instead of an out-of-memory crash
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a, **k: (1_000, 80 * 2**30))
        with pytest.raises(MemoryError, match="GiB"):
            DeviceData.build(images, meta, labels, folds, 0, [str(i) for i in range(len(labels))], dev)


# --------------------------------------------------------------------------- numerics of evaluation


def test_evaluation_in_bf16_agrees_with_fp32(dev):
    from metanet_utils.augment import BatchAugment
    from metanet_utils.config import RunConfig
    from metanet_utils.evaluate import mean_class_recall
    from metanet_utils.train import DeviceData, evaluate, train_one_epoch

    images, meta, labels, folds = _cache_arrays(n=210)
    data = DeviceData.build(images, meta, labels, folds, 0, [str(i) for i in range(len(labels))], dev)
    model = _tiny(dev)
    aug = BatchAugment(crop=40, mean=(0.5,) * 3, std=(0.25,) * 3, rotation=0)
    cfg = RunConfig(backbone="test_resnet", batch_size=16, image_size=48, crop_size=40, pretrained=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for e in range(4):  # a few epochs in fp32, so that predictions are confident enough to compare
        train_one_epoch(model, data, aug, nn.CrossEntropyLoss(), opt, cfg, e, dev, None, False)

    p32, _ = evaluate(model, data, aug, dev, None, False)
    results = {"bf16": evaluate(model, data, aug, dev, torch.bfloat16, False)[0]}
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        results["bf16+channels_last"] = evaluate(model, data, aug, dev, torch.bfloat16, True)[0]
        results["fp32+channels_last"] = evaluate(model, data, aug, dev, None, True)[0]
    y = labels[folds == 0]
    for name, p in results.items():
        assert p.shape == p32.shape
        assert float(np.abs(p - p32).max()) < 0.05, (name, float(np.abs(p - p32).max()))
        assert float((p.argmax(1) == p32.argmax(1)).mean()) >= 0.95, name
        assert abs(mean_class_recall(y, p) - mean_class_recall(y, p32)) <= 0.05, name


# --------------------------------------------------------------------------- CUDA graphs


def _needs_cuda(dev: torch.device) -> None:
    if dev.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")


def test_cuda_graph_step_matches_the_eager_step_on_the_gpu(dev):
    """The replayed step computes what the eager step computes: same losses, same weights, after
    warm-up, capture, a smaller batch in between and a learning-rate change (capture again).
    On the CPU (METANET_GPU_TESTS_ON_CPU=1) a recording stand-in replaces the graph."""
    from _graphs import RecordingGraphs

    monkey_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # the same (heuristic) kernels in both modes
    try:
        _graph_and_eager_steps(dev, RecordingGraphs)
    finally:
        torch.backends.cudnn.benchmark = monkey_benchmark


def _graph_and_eager_steps(dev, RecordingGraphs) -> None:
    from metanet_utils.ops.step import TrainStep

    g = torch.Generator().manual_seed(5)
    sizes = [16] * 6 + [9] + [16] * 5
    batches = [(torch.rand(b, 3, 40, 40, generator=g).to(dev), torch.rand(b, 17, generator=g).to(dev),
                torch.randint(0, 7, (b,), generator=g).to(dev)) for b in sizes]
    runs = {}
    for mode in ("eager", "graph"):
        model = _tiny(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        crit = nn.CrossEntropyLoss(weight=torch.linspace(0.5, 2, 7, device=dev))
        step = TrainStep(model, crit, opt, batch_size=16, cuda_graph=mode == "graph", warmup=2,
                         _backend=None if dev.type == "cuda" else RecordingGraphs())  # CPU: the bookkeeping only
        losses = []
        for i, (x, m, y) in enumerate(batches):
            if i == 9:
                for grp in opt.param_groups:
                    grp["lr"] = 0.005
            losses.append(float(step(x, m, y)))
        runs[mode] = (losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, step)
    (l_e, w_e, _), (l_g, w_g, step) = runs["eager"], runs["graph"]
    assert step.failure is None, step.failure
    # 2 warm-up steps, capture at the 3rd batch, the batch of 9 eager, capture again at the lr change
    assert step.stats == {"eager": 3, "replayed": 9, "captures": 2}, step.stats
    np.testing.assert_allclose(l_g, l_e, rtol=1e-3, atol=1e-4)
    for k in w_e:
        torch.testing.assert_close(w_g[k].float(), w_e[k].float(), rtol=1e-3, atol=1e-4, msg=k)


def test_train_run_with_cuda_graphs_records_replays_and_matches_an_eager_run(dev, small_dataset, isolated_root):
    import shutil

    from metanet_utils.config import RunConfig
    from metanet_utils.ops.step import graph_step
    from metanet_utils.train import record_dir, train_run

    _needs_cuda(dev)
    ds = small_dataset
    base = RunConfig(backbone="test_resnet", fusion="metanet", n_folds=2, fold=0, epochs=2, milestones=(1,),
                     image_size=64, crop_size=56, batch_size=32, lr=0.01, pretrained=False, precision="fp32",
                     data_kind=ds.kind, data_fingerprint=ds.fingerprint)
    m_graph = train_run(base.replace(cuda_graphs="on"), ds, device=str(dev), progress=False, make_step=graph_step)
    ex = m_graph["execution"]
    assert ex["cuda_graphs"] is True and ex["cuda_graphs_failure"] is None, ex
    assert ex["captures"] == 2 and ex["replayed"] > 0  # captured again after the lr milestone

    # cuda_graphs is not part of run_id: move the graph run's record aside and train the eager twin
    run = record_dir(base)
    graph_copy = run.with_name(run.name + "-graph")
    shutil.move(str(run), str(graph_copy))
    m_eager = train_run(base.replace(cuda_graphs="off"), ds, device=str(dev), progress=False)
    assert m_eager["execution"] == {"cuda_graphs": False, "trained_together": False}  # the eager step
    # same seeds and batches; cuDNN autotuning may pick other (TF32) kernels in the two runs
    h_g, h_e = pd.read_csv(graph_copy / "history.csv"), pd.read_csv(run / "history.csv")
    np.testing.assert_allclose(h_g["train_loss"], h_e["train_loss"], rtol=2e-2)
    p_g = pd.read_csv(graph_copy / "predictions.csv").iloc[:, 1:].to_numpy()
    p_e = pd.read_csv(run / "predictions.csv").iloc[:, 1:].to_numpy()
    assert float(np.abs(p_g - p_e).max()) < 5e-2


@pytest.mark.parametrize("graphs", ["off", "on"], ids=["eager", "cuda-graphs"])
def test_runs_trained_together_on_streams_match_runs_trained_alone(dev, small_dataset, tmp_path, graphs):
    """Two folds trained at once (one CUDA stream each, eager or one CUDA graph each, one shared image
    cache) give the records of the two folds trained one after the other."""
    from metanet_utils.config import RunConfig
    from metanet_utils.ops.together import train_runs_together
    from metanet_utils.train import is_complete, record_dir, train_run

    _needs_cuda(dev)
    ds = small_dataset
    cfgs = [RunConfig(backbone="test_resnet", fusion="metanet", n_folds=2, fold=f, epochs=2, milestones=(1,),
                      image_size=64, crop_size=56, batch_size=32, lr=0.01, pretrained=False, precision="fp32",
                      cuda_graphs=graphs, data_kind=ds.kind, data_fingerprint=ds.fingerprint) for f in (0, 1)]
    out = train_runs_together(cfgs, ds, runs_dir=tmp_path / "together", device=str(dev), progress=False)
    for c in cfgs:
        m = out[c.run_id]
        assert isinstance(m, dict), m
        ex = m["execution"]
        assert ex["trained_together"] is True and ex["cuda_graphs"] is (graphs == "on"), ex
        train_run(c, ds, runs_dir=tmp_path / "alone", device=str(dev), progress=False)
        t, a = record_dir(c, tmp_path / "together"), record_dir(c, tmp_path / "alone")
        assert is_complete(t) and is_complete(a)
        h_t, h_a = pd.read_csv(t / "history.csv"), pd.read_csv(a / "history.csv")
        np.testing.assert_allclose(h_t["train_loss"], h_a["train_loss"], rtol=2e-2)
        p_t = pd.read_csv(t / "predictions.csv").iloc[:, 1:].to_numpy()
        p_a = pd.read_csv(a / "predictions.csv").iloc[:, 1:].to_numpy()
        assert float(np.abs(p_t - p_a).max()) < 5e-2


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graph"])
def test_the_training_loop_never_waits_for_the_gpu(dev, graphs):
    """Between the start and the end of an epoch nothing blocks the CPU on the GPU (no .item(), no
    blocking copies), so launches run ahead of the device; checked with CUDA's sync debug mode."""
    from metanet_utils.augment import BatchAugment
    from metanet_utils.config import RunConfig
    from metanet_utils.ops.step import TrainStep
    from metanet_utils.train import DeviceData, iter_train_epoch, prepare_batch

    _needs_cuda(dev)
    images, meta, labels, folds = _cache_arrays(n=400)
    data = DeviceData.build(images, meta, labels, folds, 0, [str(i) for i in range(len(labels))], dev)
    model = _tiny(dev, channels_last=True)
    crit = nn.CrossEntropyLoss(weight=torch.linspace(0.5, 2, 7, device=dev))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    aug = BatchAugment(crop=40, mean=(0.5,) * 3, std=(0.25,) * 3)
    step = TrainStep(model, crit, opt, 16, torch.bfloat16, cuda_graph=graphs)
    step.set_prepare(prepare_batch(data, aug, True))
    cfg = RunConfig(backbone="test_resnet", batch_size=16, image_size=48, crop_size=40, pretrained=False)
    it = iter_train_epoch(model, data, aug, crit, opt, cfg, 0, dev, torch.bfloat16, True, step=step)
    for _ in range(6):  # warm-up and capture synchronise on purpose
        next(it)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            next(it)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert step.stats["replayed"] >= (5 if graphs else 0), step.stats
