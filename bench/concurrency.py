"""Several training runs side by side on one device: aggregate images per second.

The paper's protocol is 155 independent runs at batch 32, a size that leaves a large GPU
mostly idle (the step is launch-bound). The grid can train several runs at once
(``grid --workers N``, or several Slurm jobs per GPU). This measures what that is worth:
N processes of ``bench/throughput.py`` (kit pipeline only) started together on the same
device; the aggregate is the sum of their medians, measured over overlapping windows.

Each process uses the kit's default eager step, or with ``--cuda-graphs on`` the opt-in CUDA-graph
step (GPU only). Without NVIDIA MPS the processes' kernels take turns on the GPU (time slicing): side by
side helps where one run leaves the GPU idle between launches, much less once its step is a replayed graph.

Usage:
    python bench/concurrency.py --backbones resnet50 densenet161 --procs 1 2 4 --json out.json --md out.md
    python bench/concurrency.py --backbones test_resnet --procs 1 2 --size 64 --crop 56 --device cpu  # CI-sized
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_side_by_side(backbone: str, procs: int, extra: list[str], timeout: float, key: str = "kit_img_s") -> dict:
    """Start ``procs`` kit measurements of ``backbone`` at once; return per-process and summed img/s
    (``key``: the column each process reports)."""
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"p{i}.json" for i in range(procs)]
        cmd = [sys.executable, str(HERE / "throughput.py"), "--backbones", backbone, "--pipelines", "kit",
               "--random-cache", *extra]
        env = dict(os.environ)
        if "cpu" in extra:  # share the cores instead of oversubscribing them (a thread count set outside stays)
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs)))
        t0 = time.perf_counter()
        ps = [subprocess.Popen([*cmd, "--json", str(o), "--md", str(o.with_suffix(".md"))], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for o in outs]
        errors = []
        for p in ps:
            try:
                _, err = p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                p.kill()
                err = "timed out"
            if p.returncode:
                errors.append((err or "")[-500:])
        per = []
        for o in outs:
            if o.is_file():
                rows = json.loads(o.read_text()).get("results", [])
                per += [r.get(key) for r in rows if r.get(key)]
    return {"backbone": backbone, "procs": procs, "per_process_img_s": per,
            "aggregate_img_s": sum(per) if len(per) == procs else None,
            "wall_s": round(time.perf_counter() - t0, 1), "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["resnet50"])
    ap.add_argument("--procs", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--max-seconds", type=float, default=8.0, help="timed window of each process")
    ap.add_argument("--warmup-seconds", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=150.0, help="per side-by-side measurement")
    ap.add_argument("--cuda-graphs", default="off", choices=["off", "on"],
                    help="step execution of every run: off (the default eager step) or on (CUDA graphs, GPU only)")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--md", type=Path, required=True)
    a = ap.parse_args(argv)
    extra = ["--batches", str(a.batch), "--max-seconds", str(a.max_seconds), "--warmup-seconds",
             str(a.warmup_seconds), "--max-images", "512", "--cuda-graphs", a.cuda_graphs, "--eval", "off",
             "--no-print"]
    key = "kit_graphs_img_s" if a.cuda_graphs == "on" else "kit_img_s"
    for flag, v in (("--size", a.size), ("--crop", a.crop), ("--device", a.device)):
        if v is not None:
            extra += [flag, str(v)]
    rows = []
    for b in a.backbones:
        for n in a.procs:
            r = run_side_by_side(b, n, extra, a.timeout, key)
            rows.append(r)
            print(f"{b} x{n}: aggregate {r['aggregate_img_s']} img/s  per process {r['per_process_img_s']}"
                  + (f"  errors: {r['errors']}" if r["errors"] else ""), flush=True)
            a.json.write_text(json.dumps({"batch": a.batch, "cuda_graphs": a.cuda_graphs, "rows": rows}, indent=2))
    lines = ["| backbone | runs side by side | aggregate img/s | per run img/s | vs one run |",
             "|---|---:|---:|---|---:|"]
    single = {r["backbone"]: r["aggregate_img_s"] for r in rows if r["procs"] == 1}
    for r in rows:
        agg, one = r["aggregate_img_s"], single.get(r["backbone"])
        ratio = f"{agg / one:.2f}" if agg and one else "-"
        per = ", ".join(f"{v:,.0f}" for v in r["per_process_img_s"]) or "-"
        lines.append(f"| {r['backbone']} | {r['procs']} | {agg:,.0f} | {per} | {ratio} |" if agg else
                     f"| {r['backbone']} | {r['procs']} | - | {per} | - |")
    a.md.write_text(f"Batch {a.batch}, kit pipeline (CUDA graphs: {a.cuda_graphs}), random uint8 cache, one process "
                    "per run, started together.\n\n"
                    + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
