"""A stand-in for CUDA graphs, for running the graph bookkeeping of metanet_utils.ops.step on the CPU."""

from __future__ import annotations

import contextlib


class RecordingGraphs:
    """Stands in for torch.cuda graphs: capture records, replay calls the recorded function."""

    def __init__(self, fail_capture: bool | str = False) -> None:
        self.fail_capture = fail_capture
        self.captures = 0
        self.replays = 0
        self.released = 0
        self.side_stream_steps = 0

    @contextlib.contextmanager
    def side_stream(self):
        self.side_stream_steps += 1
        yield

    def capture(self, fn):
        if self.fail_capture == "invalidated":  # as torch.cuda.graph ends a capture that a sync broke
            try:
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            except RuntimeError:
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture") from None
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        return fn

    def replay(self, graph) -> None:
        self.replays += 1
        graph()

    def release(self, graph) -> None:
        self.released += 1
