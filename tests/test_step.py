"""The training step (metanet_utils.ops.step): eager, and the CUDA-graph bookkeeping (opt-in: cuda_graphs: on).

The real CUDA graph is exercised by tests/test_gpu.py. Here the graph back end is replaced by one
that records the captured function and calls it again on every replay, which has the same
contract as a graph (capture runs nothing; a replay reads the static input buffers and writes the
static loss buffer). That checks everything the step decides on its own: warm-up before capture,
static buffers, in-place gradients shared with eager steps, capture again when the learning rate
changes, eager steps for other batch sizes, and the fall-back when a capture fails.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from metanet_utils.config import ConfigError, Profile, RunConfig
from metanet_utils.ops.step import TrainStep, cuda_graphs_wanted

from _graphs import RecordingGraphs as _RecordingGraphs


@pytest.fixture()
def one_torch_thread():
    """Tiny CPU models on a busy 2-core machine: one intra-op thread is many times faster than two that contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Net(nn.Module):
    """Conv + BatchNorm + a metadata gate: the kinds of layers the real models have."""

    def __init__(self, meta_dim: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.gate = nn.Linear(meta_dim, 8)
        self.fc = nn.Linear(8, 7)

    def forward(self, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.bn(self.conv(x)))
        f = f * torch.sigmoid(self.gate(meta))[:, :, None, None]
        return self.fc(f.mean((2, 3)))


def _setup(seed: int = 0, lr: float = 0.05):
    torch.manual_seed(seed)
    net = _Net()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    crit = nn.CrossEntropyLoss(weight=torch.linspace(0.5, 2.0, 7))
    return net, opt, crit


def _batches(sizes, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(b, 3, 8, 8, generator=g), torch.rand(b, 5, generator=g), torch.randint(0, 7, (b,), generator=g))
            for b in sizes]


def _train(step: TrainStep, opt, batches, lr_changes=None):
    losses = []
    for i, (x, m, y) in enumerate(batches):
        if lr_changes and i in lr_changes:
            for g in opt.param_groups:
                g["lr"] = lr_changes[i]
        losses.append(float(step(x, m, y)))
    return losses


def test_graph_mode_steps_give_the_same_parameters_and_losses_as_eager_steps():
    sizes = [8] * 7 + [5] + [8] * 4 + [3]  # a smaller batch mid-way and at the end
    lr_changes = {9: 0.005}
    net_a, opt_a, crit_a = _setup()
    eager = TrainStep(net_a, crit_a, opt_a, batch_size=8)
    losses_a = _train(eager, opt_a, _batches(sizes), lr_changes)

    net_b, opt_b, crit_b = _setup()
    back = _RecordingGraphs()
    graphed = TrainStep(net_b, crit_b, opt_b, batch_size=8, cuda_graph=True, warmup=2, _backend=back)
    losses_b = _train(graphed, opt_b, _batches(sizes), lr_changes)

    assert losses_a == losses_b
    for (name, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(a, b), name  # includes BatchNorm running statistics and the batch counter
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(opt_a.state[pa]["momentum_buffer"], opt_b.state[pb]["momentum_buffer"])


def test_the_step_warms_up_eagerly_then_captures_once_and_replays():
    net, opt, crit = _setup()
    back = _RecordingGraphs()
    step = TrainStep(net, crit, opt, batch_size=8, cuda_graph=True, warmup=3, _backend=back)
    _train(step, opt, _batches([8] * 10))
    assert back.side_stream_steps == 3  # warm-up steps run on the side stream
    assert back.captures == 1 and step.stats == {"eager": 3, "replayed": 7, "captures": 1}
    assert step.mode == "graph" and step.describe()["cuda_graphs"] is True
    # gradients were never set to None: the graph's buffers stay the ones the parameters point at
    assert all(p.grad is not None for p in net.parameters())


def test_a_learning_rate_change_releases_the_graph_and_captures_again():
    net, opt, crit = _setup()
    back = _RecordingGraphs()
    step = TrainStep(net, crit, opt, batch_size=8, cuda_graph=True, warmup=1, _backend=back)
    _train(step, opt, _batches([8] * 12), lr_changes={5: 0.01, 9: 0.001})
    assert back.captures == 3 and back.released == 2
    assert step._graph_key[0][0] == pytest.approx(0.001)
    # an unchanged learning rate never captures again
    _train(step, opt, _batches([8] * 4, seed=3))
    assert back.captures == 3


def test_batches_of_another_size_run_eagerly_on_the_shared_gradients():
    net, opt, crit = _setup()
    back = _RecordingGraphs()
    step = TrainStep(net, crit, opt, batch_size=8, cuda_graph=True, warmup=1, _backend=back)
    _train(step, opt, _batches([8, 8, 8]))
    grads = [p.grad for p in net.parameters()]
    before = step.stats["eager"]
    _train(step, opt, _batches([5], seed=4))
    assert step.stats["eager"] == before + 1 and back.captures == 1
    assert all(p.grad is g for p, g in zip(net.parameters(), grads))  # zeroed in place, not replaced


def test_a_failed_capture_falls_back_to_eager_steps_and_says_why(capsys):
    sizes = [8] * 6
    net_a, opt_a, crit_a = _setup()
    losses_a = _train(TrainStep(net_a, crit_a, opt_a, batch_size=8), opt_a, _batches(sizes))

    net_b, opt_b, crit_b = _setup()
    step = TrainStep(net_b, crit_b, opt_b, batch_size=8, cuda_graph=True, warmup=2,
                     _backend=_RecordingGraphs(fail_capture=True))
    losses_b = _train(step, opt_b, _batches(sizes))
    assert step.mode == "eager" and "not permitted" in step.failure
    assert step.describe()["cuda_graphs"] is False and step.describe()["cuda_graphs_failure"]
    assert "CUDA graph capture failed" in capsys.readouterr().out
    assert losses_a == pytest.approx(losses_b, rel=0, abs=1e-6)
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)


def test_a_capture_broken_midway_is_reported_by_what_broke_it():
    net, opt, crit = _setup()
    step = TrainStep(net, crit, opt, batch_size=8, cuda_graph=True, warmup=1,
                     _backend=_RecordingGraphs(fail_capture="invalidated"))
    _train(step, opt, _batches([8] * 3))
    assert step.failure == "RuntimeError: CUDA error: operation not permitted when stream is capturing"


def test_cuda_graphs_are_off_unless_asked_for_and_on_needs_a_gpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert RunConfig(backbone="resnet50").cuda_graphs == "off" and Profile(name="x").cuda_graphs == "off"
    assert cuda_graphs_wanted("off", cuda) is False and cuda_graphs_wanted("off", cpu) is False
    assert cuda_graphs_wanted("on", cuda) is True
    with pytest.raises(ValueError, match="needs a CUDA device"):
        cuda_graphs_wanted("on", cpu)
    with pytest.raises(ValueError, match="choose off or on"):
        cuda_graphs_wanted("auto", cuda)


def test_cuda_graphs_is_recorded_but_does_not_change_the_run_id():
    base = RunConfig(backbone="resnet50")
    # run ids of records written before the setting existed stay valid
    assert base.run_id == "resnet50-metanet-age+sex+loc-k2-f0-87997e7b03"
    assert base.replace(cuda_graphs="on").run_id == base.run_id
    assert base.replace(cuda_graphs="on").to_dict()["cuda_graphs"] == "on"
    assert base.replace(precision="fp32").run_id != base.run_id  # settings that change numbers still count
    # a record's config.json from before graphs became opt-in ("auto") reads back as the eager default
    old = RunConfig.from_dict({**base.to_dict(), "cuda_graphs": "auto"})
    assert old.cuda_graphs == "off" and old.run_id == base.run_id
    with pytest.raises(ConfigError, match="cuda_graphs"):
        RunConfig(backbone="resnet50", cuda_graphs="always")
    for bad in ("maybe", "auto"):  # a profile says on or off
        with pytest.raises(ConfigError, match="cuda_graphs"):
            Profile(name="x", cuda_graphs=bad)


def test_the_grid_passes_the_profile_setting_to_every_run():
    from types import SimpleNamespace

    from metanet_utils.config import list_profiles, load_profile
    from metanet_utils.runs import enumerate_runs

    prof = load_profile("smoke", cuda_graphs="on")
    runs = enumerate_runs(prof, SimpleNamespace(kind="real", fingerprint="x"))
    assert runs and {r.cuda_graphs for r in runs} == {"on"}
    for name in list_profiles():  # opt-in: no shipped profile turns graphs on
        assert load_profile(name).cuda_graphs == "off", name


def test_train_run_trains_with_the_step_it_is_given_and_the_grid_gives_graphs_only_on_a_gpu(isolated_root,
                                                                                             real_data_dir,
                                                                                             one_torch_thread):
    """train_run's ``make_step`` hook: a graph step (the recording stand-in on the CPU, warm-up 1) is captured,
    replayed and captured again after the lr milestone, and the run's record equals the eager run's, bit for bit;
    metrics.json says what ran. The grid hands the real graph step to ``cuda_graphs: on`` runs only, and that
    step refuses a CPU."""
    import pandas as pd

    from metanet_utils.dataset import open_dataset
    from metanet_utils.ops.grid import step_for
    from metanet_utils.ops.step import graph_step
    from metanet_utils.train import train_run

    ds = open_dataset(real_data_dir, max_images=80)
    cfg = RunConfig(backbone="test_resnet", fusion="metanet", n_folds=2, epochs=2, milestones=(1,), image_size=40,
                    crop_size=32, batch_size=8, lr=0.01, pretrained=False, data_kind=ds.kind,
                    data_fingerprint=ds.fingerprint)
    eager = train_run(cfg, ds, runs_dir=isolated_root / "eager", device="cpu", progress=False)
    back = _RecordingGraphs()

    def make_step(model, criterion, optimizer, prepare, batch_size, amp_dtype):
        step = TrainStep(model, criterion, optimizer, batch_size, amp_dtype, cuda_graph=True, warmup=1, _backend=back)
        step.set_prepare(prepare)
        return step

    on = cfg.replace(cuda_graphs="on")
    graphed = train_run(on, ds, runs_dir=isolated_root / "graph", device="cpu", progress=False, make_step=make_step)
    assert eager["execution"] == {"cuda_graphs": False, "trained_together": False}
    ex = graphed["execution"]
    assert ex["cuda_graphs"] is True and ex["captures"] == back.captures == 2 and ex["replayed"] == back.replays > 0
    for name in ("predictions.csv", "history.csv"):
        a, b = (pd.read_csv(isolated_root / d / cfg.run_id / name) for d in ("eager", "graph"))
        pd.testing.assert_frame_equal(a.drop(columns=["epoch_time_s", "images_per_s"], errors="ignore"),
                                      b.drop(columns=["epoch_time_s", "images_per_s"], errors="ignore"),
                                      check_exact=True)
    assert step_for(on) is graph_step and step_for(cfg) is None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        train_run(on, ds, runs_dir=isolated_root / "cpu", device="cpu", progress=False, make_step=step_for(on))


def test_a_prepare_function_runs_inside_the_step_and_a_new_cache_captures_again():
    """The kit's path: the step gets cache indices and augmentation parameters, gathers and augments
    inside (inside the graph); same numbers as eager; new cache tensors mean a new capture."""
    g = torch.Generator().manual_seed(2)
    cache = torch.rand(40, 3, 8, 8, generator=g)
    meta_all, y_all = torch.rand(40, 5, generator=g), torch.randint(0, 7, (40,), generator=g)

    def prepare(idx, p):
        return cache[idx] * p[:, :1, None, None], meta_all[idx], y_all[idx]

    order = torch.randperm(40, generator=g)
    scales = 0.5 + torch.rand(40, 1, generator=g)

    def train(graphed: bool):
        net, opt, crit = _setup()
        back = _RecordingGraphs()
        step = TrainStep(net, crit, opt, batch_size=8, cuda_graph=graphed, warmup=1, _backend=back)
        step.set_prepare(prepare, key="cache-1")
        losses = [float(step(order[i:i + 8], scales[i:i + 8])) for i in range(0, 40, 8)]
        step.set_prepare(prepare, key="cache-1")  # same cache: the graph stays
        losses += [float(step(order[:8], scales[:8]))]
        captures_same = back.captures
        step.set_prepare(prepare, key="cache-2")  # another cache: captured again at the next full batch
        losses += [float(step(order[8:16], scales[8:16]))]
        return losses, net, captures_same, back.captures

    l_e, n_e, _, _ = train(False)
    l_g, n_g, same, after = train(True)
    assert l_e == l_g
    for a, b in zip(n_e.parameters(), n_g.parameters()):
        assert torch.equal(a, b)
    assert same == 1 and after == 2
