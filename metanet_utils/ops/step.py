"""One SGD training step, run eagerly or replayed from a CUDA graph (opt-in: ``cuda_graphs: on``).

At batch 32 a GPU step is launch-bound (ResNet50: about a thousand small kernels launched by Python). A CUDA graph
records the whole step (forward, loss, backward, SGD update) once and replays it with one launch, with the eager
step's numbers. Opt-in until a dated GPU record in ``bench/results/`` shows it correct and faster. A graph needs
fixed shapes (other batch sizes run eagerly), fixed memory (static input buffers, gradients zeroed in place),
frozen Python numbers (a new learning rate is captured again), lazy state created first (``warmup`` eager steps
on a side stream) and no host synchronisation inside (autocast's weight cache off). A failed capture is said once
and the step runs eagerly from then on.

Example:
    >>> import torch.nn as nn
    >>> class Net(nn.Linear):
    ...     def forward(self, x, meta): return super().forward(torch.cat([x, meta], 1))
    >>> net = Net(5, 7)
    >>> step = TrainStep(net, nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1), batch_size=8)
    >>> step(torch.rand(8, 3), torch.rand(8, 2), torch.randint(0, 7, (8,))).shape, step.mode
    (torch.Size([]), 'eager')
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn as nn


def cuda_graphs_wanted(setting: str, device: torch.device) -> bool:
    """Resolve a ``cuda_graphs`` setting, ``off`` (eager steps) or ``on`` (capture and replay; CUDA only)."""
    if setting not in ("off", "on"):
        raise ValueError(f"cuda_graphs={setting!r} is not allowed; choose off or on")
    if setting == "on" and device.type != "cuda":
        raise ValueError(f"cuda_graphs='on' needs a CUDA device, not {device.type!r}; use 'off'")
    return setting == "on"


def graph_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, prepare: Callable,
               batch_size: int, amp_dtype: torch.dtype | None = None) -> "TrainStep":
    """The ``make_step`` of :func:`~metanet_utils.train.train_run` for ``cuda_graphs: on`` (CUDA only)."""
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
        """Record ``fn`` on the side stream. cuBLAS keeps a workspace per stream: clearing them first gives the graph
        its own (graphs replayed at once never share one), clearing after keeps eager work out of the graph's pool."""
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
    """One training step (forward, loss on ``(logits.float(), y)``, backward, optimizer step) on a batch.

    Called as ``step(x, meta, y)``, or after :meth:`set_prepare` as ``step(*inputs)``. Returns the loss as a 0-d
    device tensor; with a graph it is a buffer the next call overwrites.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int,
                 amp_dtype: torch.dtype | None = None, cuda_graph: bool = False, warmup: int = 3,
                 _backend: Any = None) -> None:
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.batch_size = int(batch_size)
        self.amp_dtype = amp_dtype
        self.warmup = max(1, int(warmup))
        self.graph_wanted = bool(cuda_graph)
        self._backend = _backend
        self._graph: Any = None
        self._graph_key: tuple | None = None
        self._static: tuple[torch.Tensor, ...] | None = None
        self._loss_buf: torch.Tensor | None = None
        self._prepare: Callable | None = None
        self._prepare_key: Any = None
        self._warm = 0
        self.failure: str | None = None
        self.stats = {"eager": 0, "replayed": 0, "captures": 0}

    @property
    def mode(self) -> str:
        """``graph`` while steps are (or are about to be) replayed, else ``eager``."""
        return "graph" if self.graph_wanted and self.failure is None else "eager"

    def set_prepare(self, fn: Callable | None, key: Any = None) -> None:
        """Call ``fn(*inputs) -> (x, meta, y)`` first; ``key`` names what else ``fn`` reads (another key: capture
        again)."""
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
        """What ran, for ``metrics.json`` and benchmark records."""
        return {"cuda_graphs": self.mode == "graph" and self.stats["captures"] > 0, **self.stats,
                "cuda_graphs_failure": self.failure}

    def _back(self):
        if self._backend is None:
            self._backend = _CudaGraphs(next(self.model.parameters()).device)
        return self._backend

    def _hyper_key(self) -> tuple:
        keys = ("lr", "momentum", "weight_decay", "dampening", "nesterov", "maximize")
        return tuple(tuple(float(g[k]) if isinstance(g.get(k), (int, float, torch.Tensor)) else g.get(k)
                           for k in keys) for g in self.optimizer.param_groups)

    def _body(self, *inputs: torch.Tensor) -> torch.Tensor:
        graphs = self.mode == "graph"
        x, meta, y = self._prepare(*inputs) if self._prepare is not None else inputs
        self.optimizer.zero_grad(set_to_none=not graphs)  # with graphs, gradients live at fixed addresses
        with torch.autocast(x.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None,
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
        if all(p.grad is None for p in self.model.parameters() if p.requires_grad):
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
        # an invalidated capture raises "... due to a previous error during capture"; its cause is the exception before
        cause = e.__context__ if e.__context__ is not None and "during capture" in str(e) else e
        self.failure = f"{type(cause).__name__}: {str(cause).splitlines()[0][:300] if str(cause) else ''}"
        print(f"[train] CUDA graph capture failed ({self.failure}); training continues with eager steps",
              flush=True)
