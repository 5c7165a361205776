"""One SGD training step, run eagerly or replayed from a CUDA graph (opt-in: ``cuda_graphs: on``).

At the paper's batch of 32 a GPU training step is launch-bound: ResNet50's forward, backward
and optimizer step are about a thousand small kernels, and the Python that launches them takes
longer than the GPU needs to run them. A CUDA graph records the whole step once (forward, loss,
backward, SGD update) and replays it with one launch per step, so the GPU, not Python, sets the
pace. The numbers are those of the eager step: the same kernels run in the same order.

Replay is opt-in (``cuda_graphs: on`` in a profile; the default ``off`` runs eager steps) until a dated
GPU record in ``bench/results/`` shows it correct and faster. This module depends on torch only; the
grid hands :func:`graph_step` to ``train_run`` as its ``make_step``.

What a graph demands, and how :class:`TrainStep` meets it:

* **Fixed shapes.** Batches of the captured size are replayed; any other size (the last, smaller
  batch of an epoch) runs eagerly on the same parameters, gradients and optimizer state.
* **Fixed memory.** Inputs are copied into buffers the graph reads. Gradients are allocated once
  and zeroed in place (never set to ``None``), so eager and replayed steps share them. With a
  prepare function (:meth:`TrainStep.set_prepare`) the inputs can be a batch's cache indices and
  its augmentation parameters: the gather and the augmentation are then part of the graph too.
* **Python numbers are frozen in.** The learning rate, momentum and weight decay of every
  parameter group are baked into the recorded SGD update; when the scheduler changes them (the
  paper's epochs 50, 120, 200) the step is captured again.
* **Lazy state must exist first.** cuDNN autotuning, gradient and momentum buffers are created by
  ``warmup`` eager steps on real batches (on a side stream, as PyTorch's graph docs ask) before the
  capture.
* **No host synchronisation inside.** Nothing in the step reads a GPU value on the CPU; autocast's
  weight cache is off (``cache_enabled=False``), as capture requires.

If a capture fails (a model with a data-dependent branch, an old driver), the step says why once
and runs eagerly from then on: a run is never lost to the speed-up.

Example:
    >>> import torch, torch.nn as nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.fc = nn.Linear(4 + 2, 7)
    ...     def forward(self, x, meta):
    ...         return self.fc(torch.cat([x.flatten(1).mean(1, keepdim=True).expand(-1, 4), meta], 1))
    >>> net = Net()
    >>> step = TrainStep(net, nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1), batch_size=8)
    >>> loss = step(torch.rand(8, 3, 4, 4), torch.rand(8, 2), torch.randint(0, 7, (8,)))
    >>> step.mode, tuple(loss.shape)
    ('eager', ())
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ["TrainStep", "cuda_graphs_wanted", "graph_step"]


def cuda_graphs_wanted(setting: str, device: torch.device) -> bool:
    """Resolve a ``cuda_graphs`` setting: ``off`` (the default: eager steps) or ``on`` (capture and replay;
    opt-in until a dated GPU record in ``bench/results/`` shows it correct and faster). ``on`` needs a
    CUDA device.

    Example:
        >>> cuda_graphs_wanted("off", torch.device("cpu"))
        False
    """
    if setting not in ("off", "on"):
        raise ValueError(f"cuda_graphs={setting!r} is not allowed; choose off or on")
    if setting == "on" and device.type != "cuda":
        raise ValueError(f"cuda_graphs='on' needs a CUDA device, not {device.type!r}; use 'off'")
    return setting == "on"


def graph_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, prepare: Callable,
               batch_size: int, amp_dtype: torch.dtype | None = None) -> "TrainStep":
    """The ``make_step`` that :func:`metanet_utils.train.train_run` takes for ``cuda_graphs: on``: the step of
    :func:`~metanet_utils.train.sgd_step` (same arguments, same numbers), captured once with its ``prepare``
    (gather and augment from the device cache) and replayed. Refused off a CUDA device."""
    cuda_graphs_wanted("on", next(model.parameters()).device)
    step = TrainStep(model, criterion, optimizer, batch_size, amp_dtype, cuda_graph=True)
    step.set_prepare(prepare)
    return step


class _CudaGraphs:
    """The real back end: ``torch.cuda.CUDAGraph`` capture and replay."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._side = torch.cuda.Stream(device=device)

    @contextlib.contextmanager
    def side_stream(self):
        cur = torch.cuda.current_stream(self.device)
        self._side.wait_stream(cur)
        with torch.cuda.stream(self._side):
            yield
        cur.wait_stream(self._side)

    def capture(self, fn: Callable[[], None]) -> Any:
        """Record ``fn`` on this step's own side stream. cuBLAS keeps one workspace per (handle, stream):
        clearing the cached workspaces first makes the capture allocate its own inside the graph's private
        memory pool, so graphs of runs replayed at once on different streams never share one (as
        ``torch.cuda.make_graphed_callables`` users and inductor's CUDA-graph trees do); clearing after
        keeps eager work from writing into the graph's pool. A capture that fails inside
        ``torch.cuda.graph`` can leave its stream current: the caller's stream is restored either way."""
        prev = torch.cuda.current_stream(self.device)
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)
        torch.cuda.synchronize(self.device)
        clear()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._side):
                fn()
        finally:
            torch.cuda.set_stream(prev)
            torch.cuda.synchronize(self.device)
            clear()
        return graph

    @staticmethod
    def replay(graph: Any) -> None:
        graph.replay()

    def release(self, graph: Any) -> None:
        del graph
        torch.cuda.synchronize(self.device)


class TrainStep:
    """One training step (forward, class-weighted loss, backward, optimizer step) on a batch.

    Args:
        model: called as ``model(x, meta)``; returns logits.
        criterion: loss on ``(logits.float(), y)``.
        optimizer: stepped once per call.
        batch_size: the size that is captured and replayed; other sizes run eagerly.
        amp_dtype: autocast dtype (``None``: fp32).
        cuda_graph: capture and replay the step (CUDA only; off by default, see :func:`cuda_graphs_wanted`).
        warmup: eager steps on full batches before the capture (at least 1).

    Called as ``step(x, meta, y)``, or, after :meth:`set_prepare`, as ``step(*inputs)`` where the
    prepare function turns the inputs into ``(x, meta, y)`` inside the step (and inside the graph:
    e.g. gather a batch from the device-resident cache and augment it with parameters drawn
    beforehand). The first input's length is the batch size. Returns the batch's loss as a 0-d
    tensor on the device; with a graph it is a buffer the next call overwrites: read or accumulate
    it before the next call.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int,
                 amp_dtype: torch.dtype | None = None, cuda_graph: bool = False, warmup: int = 3,
                 _backend: Any = None) -> None:
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.batch_size = int(batch_size)
        self.amp_dtype = amp_dtype
        self.warmup = max(1, int(warmup))
        self.graph_wanted = bool(cuda_graph)
        self._backend = _backend
        self._graph: Any = None
        self._graph_key: tuple | None = None
        self._static: tuple[torch.Tensor, ...] | None = None
        self._loss_buf: torch.Tensor | None = None
        self._prepare: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        self._prepare_key: Any = None
        self._warm = 0
        self.failure: str | None = None
        self.stats = {"eager": 0, "replayed": 0, "captures": 0}

    # ------------------------------------------------------------------ public

    @property
    def mode(self) -> str:
        """``graph`` while steps are (or are about to be) replayed, else ``eager``."""
        return "graph" if self.graph_wanted and self.failure is None else "eager"

    def set_prepare(self, fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None,
                    key: Any = None) -> None:
        """Make the step call ``fn(*inputs) -> (x, meta, y)`` first. ``key`` names what ``fn`` reads
        besides its inputs (the cache tensors): a different key captures the graph again."""
        if key != self._prepare_key or (fn is None) != (self._prepare is None):
            self._drop_graph()
            self._static = None
        self._prepare, self._prepare_key = fn, key

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.mode == "eager" or inputs[0].shape[0] != self.batch_size:
            self.stats["eager"] += 1
            return self._body(*inputs)
        key = self._hyper_key()
        if self._graph is not None and key != self._graph_key:
            self._drop_graph()  # a scheduler milestone: capture again with the new learning rate
        if self._graph is None:
            if self._warm < self.warmup:
                self._warm += 1
                self.stats["eager"] += 1
                with self._back().side_stream():
                    return self._body(*inputs)
            try:
                self._capture(inputs, key)
            except Exception as e:  # noqa: BLE001 - fall back to the eager step, never lose the run
                self._fail(e)
                self.stats["eager"] += 1
                return self._body(*inputs)
        for static, value in zip(self._static, inputs):
            static.copy_(value)
        self._back().replay(self._graph)
        self.stats["replayed"] += 1
        return self._loss_buf

    def describe(self) -> dict[str, Any]:
        """What ran: for ``metrics.json`` and benchmark records."""
        return {"cuda_graphs": self.mode == "graph" and self.stats["captures"] > 0, **self.stats,
                "cuda_graphs_failure": self.failure}

    # ------------------------------------------------------------------ internals

    def _back(self):
        if self._backend is None:
            dev = next(self.model.parameters()).device
            self._backend = _CudaGraphs(dev)
        return self._backend

    def _hyper_key(self) -> tuple:
        keys = ("lr", "momentum", "weight_decay", "dampening", "nesterov", "maximize")
        return tuple(tuple(float(g[k]) if isinstance(g.get(k), (int, float, torch.Tensor)) else g.get(k)
                           for k in keys) for g in self.optimizer.param_groups)

    def _body(self, *inputs: torch.Tensor) -> torch.Tensor:
        graphs = self.mode == "graph"
        x, meta, y = self._prepare(*inputs) if self._prepare is not None else inputs
        # with graphs, gradients live at fixed addresses: zero them in place
        self.optimizer.zero_grad(set_to_none=not graphs)
        dev_type = x.device.type
        with torch.autocast(dev_type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None,
                            cache_enabled=False if graphs else None):
            logits = self.model(x, meta)
            loss = self.criterion(logits.float(), y)
        loss.backward()
        self.optimizer.step()
        if not graphs:
            return loss.detach()
        if self._loss_buf is None:  # created by the first (eager, warm-up) step, before any capture
            self._loss_buf = torch.zeros((), device=loss.device, dtype=torch.float32)
        self._loss_buf.copy_(loss.detach())
        return self._loss_buf

    def _capture(self, inputs: tuple[torch.Tensor, ...], key: tuple) -> None:
        if self._static is None:
            self._static = tuple(torch.empty_like(v) for v in inputs)
        for s, v in zip(self._static, inputs):
            s.copy_(v)
        missing = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        if len(missing) == sum(p.requires_grad for p in self.model.parameters()):
            raise RuntimeError("no gradients exist before the capture (the warm-up steps did not run)")
        static = self._static
        self._graph = self._back().capture(lambda: self._body(*static))
        self._graph_key = key
        self.stats["captures"] += 1

    def _drop_graph(self) -> None:
        graph, self._graph = self._graph, None
        self._graph_key = None
        if graph is not None:
            self._back().release(graph)

    def _fail(self, e: BaseException) -> None:
        self._drop_graph()
        # an invalidated capture raises "operation failed due to a previous error during capture" at its
        # end; what broke it (a host synchronisation, a blocking copy) is the exception before
        cause = e.__context__ if e.__context__ is not None and "during capture" in str(e) else e
        self.failure = f"{type(cause).__name__}: {str(cause).splitlines()[0][:300] if str(cause) else ''}"
        print(f"[train] CUDA graph capture failed ({self.failure}); training continues with eager steps",
              flush=True)
