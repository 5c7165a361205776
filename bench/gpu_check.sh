#!/usr/bin/env bash
# One-shot GPU check of the kit, under 8 minutes on one H100 (about 7 expected):
#   1. env.txt        GPU, driver, CUDA, torch/timm/python versions, CPU
#   2. gpu_tests.log  python3 -m pytest -m gpu on the test files holding GPU tests (tests/test_gpu.py:
#                     the training engine on CUDA: bf16, channels_last, device-resident cache,
#                     augmentation CUDA == CPU, bf16 evaluation; the opt-in fast paths: CUDA-graph
#                     step == eager step, runs trained together == runs trained alone)
#   3. throughput.json bench/throughput.py: the six backbones, reference vs kit (the default eager path)
#                     vs model-only ceiling, evaluation pass; beside the kit the opt-in paths (CUDA
#                     graphs, 2 runs together)
#   4. grid.json      a short real-data grid through the CLI: ResNet18 from scratch, 128 -> 112 px,
#                     none / concat / metanet side by side, 5 folds each; MCR mean +- std per fusion
#   4b. concurrency.json  ResNet50 runs side by side (one process each), if time is left
#   5. summary.md     the key numbers and every table (throughput, grid, side by side), ready to commit
#                     as bench/results/<date>-<device>.md
#   log.txt           everything the steps printed
#
# Usage:  bash bench/gpu_check.sh OUT_DIR
# Environment:
#   METANET_DATA_DIR     data folder (HAM10000_metadata.csv + ISIC_*.jpg, flat or in images/);
#                          default bench/carry/ham10000; without it the kit's shipped sample data/sample/
#                          (real images, 128x96; said loudly)
#   GPU_CHECK_BUDGET_S     soft budget of the whole script in seconds (default 470; dry run 1500)
#   GPU_CHECK_CPU_DRYRUN=1 the same steps on the CPU with tiny models (1 backbone, 1 epoch, 300 images),
#                          to check the script on a machine without a GPU
# Only `python3` from PATH is used; the package is taken from this checkout (PYTHONPATH), not installed.
# Each step runs under `timeout`; a failing step is reported and the next one still runs.
set -uo pipefail

OUT="${1:?usage: bash bench/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT="$PWD"
PY=python3
DRY="${GPU_CHECK_CPU_DRYRUN:-0}"
if [ "$DRY" = 1 ]; then BUDGET="${GPU_CHECK_BUDGET_S:-1500}"; else BUDGET="${GPU_CHECK_BUDGET_S:-470}"; fi
DATA="${METANET_DATA_DIR:-bench/carry/ham10000}"
case "$DATA" in /*) ;; *) DATA="$ROOT/$DATA" ;; esac
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
LOG="$OUT/log.txt"
STEPS="$WORK/steps.tsv"
: > "$LOG"; : > "$STEPS"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export METANET_RESULTS_DIR="$WORK/results" METANET_CACHE_DIR="$WORK/cache" METANET_FIGURES_DIR="$WORK/figures"
export PYTHONDONTWRITEBYTECODE=1
T0=$(date +%s)

left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# seconds for a step: min(WANT, time left - RESERVE), at least MIN
allot() { local want=$1 reserve=$2 min=${3:-20} l; l=$(( $(left) - reserve )); [ "$l" -lt "$want" ] && want=$l
          [ "$want" -lt "$min" ] && want=$min; echo "$want"; }
exec 3>&1  # the console, whatever a step redirects
say() { echo "[gpu_check $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG" >&3; }
# step NAME TIMEOUT_S COMMAND...: run with a timeout (whole process group), record status and duration
step() {
  local name=$1 t=$2; shift 2
  local cmd="$*"; say "step $name (timeout ${t}s): ${cmd:0:300}"
  local s rc; s=$(date +%s)
  timeout --kill-after=15 "$t" "$@"; rc=$?
  local d=$(( $(date +%s) - s ))
  local status=ok; [ $rc -ne 0 ] && status="FAILED (exit $rc)"; [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMED OUT after ${t}s"
  printf '%s\t%s\t%s\n' "$name" "$status" "$d" >> "$STEPS"
  say "step $name: $status in ${d}s"
  return 0
}

say "out $OUT, work $WORK, data $DATA, budget ${BUDGET}s, dry run $DRY"

# ---------------------------------------------------------------- data (the full set, else the shipped sample)
DATA_KIND=real
if [ ! -f "$DATA/HAM10000_metadata.csv" ]; then
  say "WARNING: no HAM10000_metadata.csv in $DATA: using the kit's small SAMPLE data/sample/ (not the full data)"
  DATA="$ROOT/data/sample"; DATA_KIND=sample
  [ -f "$DATA/HAM10000_metadata.csv" ] || { say "no data at all: set METANET_DATA_DIR"; exit 2; }
fi
export METANET_TEST_DATA="$DATA"

# ---------------------------------------------------------------- 1. environment
env_report() {
  echo "date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "dry run: $DRY"
  echo "data: $DATA ($DATA_KIND)"
  echo "host: $(uname -a)"
  echo "cores (nproc): $(nproc)"
  echo "python3: $(command -v python3) $("$PY" --version 2>&1)"
  echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo n/a) $(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l | tr -d ' ') changed files"
  echo
  "$PY" - <<'PYEOF' 2>&1
import importlib, platform
for m in ("torch", "torchvision", "timm", "numpy", "pandas", "sklearn", "scipy", "PIL", "yaml", "tqdm", "pytest",
          "matplotlib", "papermill", "pytorch_grad_cam", "submitit"):
    try:
        mod = importlib.import_module(m)
        print(f"{m:18s} {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"{m:18s} MISSING ({type(e).__name__})")
import torch
print("cuda available:", torch.cuda.is_available(), "| torch.version.cuda:", torch.version.cuda,
      "| cudnn:", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs")
try:
    import metanet_utils.train, metanet_utils.ops.grid, metanet_utils.models, metanet_utils.evaluate  # noqa: F401
    print("metanet_utils imports: ok")
except Exception as e:
    print(f"metanet_utils imports: FAILED {type(e).__name__}: {e}")
PYEOF
  echo
  if command -v lscpu >/dev/null; then lscpu | grep -E "Model name|^CPU\(s\)|Thread|Socket|NUMA node\(s\)"; fi
  free -g 2>/dev/null | head -2
  df -h "$WORK" 2>/dev/null | tail -1
  echo
  if command -v nvidia-smi >/dev/null; then nvidia-smi; echo; nvidia-smi -q; else echo "nvidia-smi: not found"; fi
}
say "step env"
s=$(date +%s)
timeout 90 bash -c "$(declare -f env_report); PY=$PY DRY=$DRY DATA='$DATA' DATA_KIND=$DATA_KIND ROOT='$ROOT' WORK='$WORK' env_report" > "$OUT/env.txt" 2>&1
printf 'env\t%s\t%s\n' "$([ $? -eq 0 ] && echo ok || echo FAILED)" "$(( $(date +%s) - s ))" >> "$STEPS"

# ---------------------------------------------------------------- 2. GPU tests
if [ "$DRY" = 1 ]; then export METANET_GPU_TESTS_ON_CPU=1; fi
# the test files that hold GPU-marked tests (collecting every file would fail on modules that need packages
# this machine may lack, e.g. nbformat for the notebook tests)
GPU_TEST_FILES=$(grep -l -E "mark\.gpu" tests/test_*.py 2>/dev/null | tr '\n' ' ')
[ -n "$GPU_TEST_FILES" ] || GPU_TEST_FILES=tests/test_gpu.py
if [ "$DRY" = 1 ]; then GT_T=$(allot 300 900 80); else GT_T=$(allot 110 360 80); fi  # on a CPU the tests are slow
step gpu_tests "$GT_T" "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider $GPU_TEST_FILES \
  > "$OUT/gpu_tests.log" 2>&1
tail -3 "$OUT/gpu_tests.log" | tee -a "$LOG"

# ---------------------------------------------------------------- 3. throughput
if [ "$DRY" = 1 ]; then
  TP_ARGS=(--device cpu --backbones test_resnet --size 64 --crop 56 --batches 8 16 --max-images 300
           --max-seconds 0.5 --warmup-seconds 0.2 --warmup-steps 2 --min-steps 1 --together 2 --cuda-graphs on)
  TP_WANT=420; GRID_RESERVE=600
else
  # the first call of each model autotunes cuDNN (PNASNet ~65 s, DenseNet161 ~21 s on an H200): the table is
  # filled in passes: batch 32 kit, ceiling and reference for all six, then there the opt-in paths (CUDA
  # graphs, 2 runs together) and the evaluation pass, then batch 128 (64 for SENet154 and PNASNet)
  TP_ARGS=(--batches 32 128 --max-images 2000 --max-seconds 1.2 --warmup-seconds 0.2 --cuda-graphs on --together 2)
  TP_WANT=265; GRID_RESERVE=125
fi
TP_T=$(allot "$TP_WANT" "$GRID_RESERVE" 60)
step throughput $(( TP_T + 30 )) "$PY" bench/throughput.py --images "$DATA" --deadline "$TP_T" "${TP_ARGS[@]}" \
  --json "$OUT/throughput.json" --md "$OUT/throughput.md" >> "$LOG" 2>&1

# ---------------------------------------------------------------- 4. short real-data grid
PROFILE="$WORK/gpu_check_grid.yaml"
if [ "$DRY" = 1 ]; then
  BACKBONE=test_resnet; EPOCHS=1; MILESTONES="[50]"; SIZE=64; CROP=56; MAXIMG=300; LR=0.01
else
  BACKBONE=resnet18; EPOCHS=10; MILESTONES="[6, 9]"; SIZE=128; CROP=112; MAXIMG=null; LR=0.01
fi
cat > "$PROFILE" <<EOF
# written by bench/gpu_check.sh: a short from-scratch grid on the real data, three fusions x 5 folds
name: gpu_check
description: "bench/gpu_check.sh: $BACKBONE from scratch, $SIZE -> $CROP px, 3 fusions x 5 folds x $EPOCHS epochs"
data: $([ "$DATA_KIND" = real ] && echo real || echo auto)
max_images: $MAXIMG
backbones: [$BACKBONE]
fusions: [none, concat, metanet]
n_folds: 5
split_scheme: image
epochs: $EPOCHS
milestones: $MILESTONES
image_size: $SIZE
crop_size: $CROP
batch_size: 32
lr: $LR
momentum: 0.9
weight_decay: 0.0001
meta_layers: 2
color_constancy: true
pretrained: false
precision: auto
cuda_graphs: "off"
runs_together: 1
ablations: {table3: false, table4: false}
EOF
grid_run() {
  # cache and folds once, then the three fusions side by side (one process each, folds 0..4 in order,
  # so a cut-off grid still has the same folds for every fusion)
  "$PY" -m metanet_utils data prepare --profile "$PROFILE" --data-dir "$DATA" || return $?
  local pids=() f rc=0
  for f in none concat metanet; do
    ( OMP_NUM_THREADS=$GRID_THREADS "$PY" -m metanet_utils grid --profile "$PROFILE" --data-dir "$DATA" --only "fusion=$f" \
        --no-wait 2>&1 | sed -u "s/^/[$f] /"; exit "${PIPESTATUS[0]}" ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  return $rc
}
GRID_T0=$(date +%s)
GRID_THREADS=$(( $(nproc) / 4 )); [ "$GRID_THREADS" -lt 1 ] && GRID_THREADS=1
step grid "$(allot 135 5 60)" bash -c "$(declare -f grid_run); PY=$PY PROFILE='$PROFILE' DATA='$DATA' GRID_THREADS=$GRID_THREADS grid_run" >> "$LOG" 2>&1
GRID_WALL=$(( $(date +%s) - GRID_T0 ))

step grid_summary 60 "$PY" - "$OUT" "$PROFILE" "$DATA" "$DATA_KIND" "$GRID_WALL" >> "$LOG" 2>&1 <<'PYEOF'
import json, math, sys
from pathlib import Path

import pandas as pd
import yaml

out, profile_path, data_dir, data_kind, wall = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
from metanet_utils.paths import runs_dir

runs = runs_dir()
profile = yaml.safe_load(profile_path.read_text())
rows = []
try:
    from metanet_utils.evaluate import load_records
    rec = load_records(runs)  # scores predictions.csv against labels.csv; skips incomplete records
    for _, r in rec.iterrows():
        rows.append({"run_id": r["run_id"], "fusion": r["fusion"], "fold": int(r["fold"]), "mcr": float(r["mcr"]),
                     "mcr_metrics": float(r["mcr_metrics"]), "path": r["path"]})
    source = "metanet_utils.evaluate.load_records (predictions.csv scored against labels.csv)"
except Exception as e:  # fall back to the metrics files
    print(f"evaluate.load_records unavailable ({type(e).__name__}: {e}); reading metrics.json", flush=True)
    for d in sorted(p for p in runs.glob("*") if (p / "metrics.json").is_file() and (p / "manifest.json").is_file()):
        cfg, m = json.loads((d / "config.json").read_text()), json.loads((d / "metrics.json").read_text())
        rows.append({"run_id": d.name, "fusion": cfg["fusion"], "fold": int(cfg["fold"]), "mcr": float(m["mcr"]),
                     "mcr_metrics": float(m["mcr"]), "path": str(d)})
    source = "metrics.json"
for r in rows:
    d = Path(r["path"])
    m = json.loads((d / "metrics.json").read_text())
    h = pd.read_csv(d / "history.csv")
    r.update({"epochs_done": int(m["epochs_done"]), "wall_time_s": round(float(m["wall_time_s"]), 1),
              "train_time_s": round(float(m["train_time_s"]), 1), "device": m.get("device"),
              "precision": m.get("precision"), "channels_last": m.get("channels_last"),
              "epoch_time_s": round(float(h["epoch_time_s"].mean()), 2),
              "epoch_time_s_after_first": round(float(h["epoch_time_s"].iloc[1:].mean()), 2) if len(h) > 1 else None,
              "images_per_s": round(float(h["images_per_s"].mean()), 1),
              "last_val_mcr": round(float(h["val_mcr"].iloc[-1]), 4), "n_train": m.get("n_train"), "n_val": m.get("n_val")})
    r.pop("path")
fus = []
for f in profile["fusions"]:
    g = [r for r in rows if r["fusion"] == f]
    x = [r["mcr"] for r in g]
    try:
        from metanet_utils.evaluate import aggregate
        a = aggregate(pd.DataFrame(g), by=["fusion"], values=["mcr"]).iloc[0] if g else None
        mean, std = (float(a["mcr_mean"]), float(a["mcr_std"])) if a is not None else (math.nan, math.nan)
    except Exception:
        mean = sum(x) / len(x) if x else math.nan
        std = (sum((v - mean) ** 2 for v in x) / (len(x) - 1)) ** 0.5 if len(x) > 1 else math.nan
    fus.append({"fusion": f, "folds_done": sorted(r["fold"] for r in g), "n": len(g),
                "mcr_mean": None if math.isnan(mean) else round(mean, 4), "mcr_std": None if math.isnan(std) else round(std, 4),
                "mcr_per_fold": {r["fold"]: round(r["mcr"], 4) for r in sorted(g, key=lambda r: r["fold"])},
                "epoch_time_s": round(sum(r["epoch_time_s"] for r in g) / len(g), 2) if g else None,
                "images_per_s_per_process": round(sum(r["images_per_s"] for r in g) / len(g), 1) if g else None,
                "run_wall_time_s": round(sum(r["wall_time_s"] for r in g) / len(g), 1) if g else None})
concurrent = sum(f["images_per_s_per_process"] or 0 for f in fus)
report = {"profile": profile, "data_dir": data_dir, "data_kind": data_kind, "grid_wall_s": wall,
          "processes_side_by_side": 3, "mcr_source": source, "mcr_std": "sample std (ddof=1) over folds",
          "images_per_s_all_processes": round(concurrent, 1), "expected_runs": 5 * len(profile["fusions"]),
          "complete_runs": len(rows), "fusions": fus, "runs": rows}
(out / "grid.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
dev = rows[0]["device"] if rows else "?"
L = [f"# Short real-data grid: {profile['backbones'][0]} from scratch, {profile['image_size']} -> {profile['crop_size']} px",
     "", f"{dev}; {data_kind} data ({data_dir}); {profile['epochs']} epochs, batch {profile['batch_size']}, lr {profile['lr']} "
     f"(/10 at {profile['milestones']}), SGD momentum 0.9, class-weighted loss, precision {profile['precision']} "
     f"({rows[0]['precision'] if rows else '?'}), channels_last {rows[0]['channels_last'] if rows else '?'}; "
     f"three fusions trained side by side (one process each) on one device; grid wall time {wall:.0f} s; "
     f"{len(rows)}/{report['expected_runs']} runs complete.", "",
     "| fusion | MCR mean ± std | folds | MCR per fold | epoch time (s) | img/s per process | run wall time (s) |",
     "|---|---|---|---|---:|---:|---:|"]
for f in fus:
    ms = f"{f['mcr_mean']:.4f} ± {f['mcr_std']:.4f}" if f["mcr_std"] is not None else (f"{f['mcr_mean']:.4f}" if f["mcr_mean"] is not None else "-")
    L.append(f"| {f['fusion']} | {ms} | {f['n']} | {', '.join(f'{v:.3f}' for v in f['mcr_per_fold'].values())} | "
             f"{f['epoch_time_s'] or '-'} | {f['images_per_s_per_process'] or '-'} | {f['run_wall_time_s'] or '-'} |")
L += ["", f"MCR = mean class recall of the last epoch's model on the validation fold ({source}); "
      f"std = sample standard deviation over folds. img/s per process: training images per second of one run while "
      f"the other two fusions train beside it (all three together: {concurrent:.0f} img/s).", ""]
(out / "grid.md").write_text("\n".join(L) + "\n")
print("\n".join(L))
PYEOF

# ---------------------------------------------------------------- 4b. runs side by side (processes), if time is left
if [ "$DRY" = 1 ]; then
  CC_ARGS=(--device cpu --backbones test_resnet --procs 1 2 --size 40 --crop 32 --max-seconds 1 --warmup-seconds 0.3)
else
  CC_ARGS=(--backbones resnet50 --procs 1 3 --max-seconds 4 --warmup-seconds 2)
fi
if [ "$(left)" -ge 45 ]; then
  CC_T=$(allot 70 5 40)
  step concurrency "$CC_T" "$PY" bench/concurrency.py "${CC_ARGS[@]}" --timeout $(( CC_T / 2 - 2 )) \
    --json "$OUT/concurrency.json" --md "$OUT/concurrency.md" >> "$LOG" 2>&1
else
  printf 'concurrency\tskipped (time budget)\t0\n' >> "$STEPS"; say "step concurrency: skipped (time budget)"
fi

# ---------------------------------------------------------------- 5. summary
step summary 60 "$PY" - "$OUT" "$STEPS" "$DRY" "$DATA_KIND" "$(( $(date +%s) - T0 ))" >> "$LOG" 2>&1 <<'PYEOF'
import datetime, json, re, sys
from pathlib import Path

out, steps_file, dry, data_kind, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], int(sys.argv[5])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except Exception:
        return None
tp, grid = load("throughput.json"), load("grid.json")
env = (out / "env.txt").read_text() if (out / "env.txt").is_file() else ""
device = tp["device"] if tp else next((l.split(":", 1)[1].split(",")[0].strip() for l in env.splitlines() if l.startswith("device 0:")), "unknown device")
date = datetime.date.today().isoformat()
slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")[:40]
L = [f"# GPU check: {device}, {date}", ""]
if dry:
    L += ["**CPU DRY RUN (GPU_CHECK_CPU_DRYRUN=1): tiny models, not a GPU measurement.**", ""]
if data_kind != "real":
    L += ["**SAMPLE DATA: no full HAM10000 copy was found; the grid ran on the kit's small sample.**", ""]
L += [f"Suggested file: `bench/results/{date}-{slug}.md`. Whole check: {elapsed} s.", ""]
vers = {k: v for k, v in (re.match(r"^(torch|timm|torchvision|python3)\s*:?\s+(.*)$", l).groups()
        for l in env.splitlines() if re.match(r"^(torch|timm|torchvision|python3)\s*:?\s+", l))}
cuda = next((l for l in env.splitlines() if l.startswith("cuda available")), "")
drv = next((l.split(":", 1)[1].strip() for l in env.splitlines() if l.strip().startswith("Driver Version")), "n/a")
L += [f"torch {vers.get('torch', '?')}, timm {vers.get('timm', '?')}, torchvision {vers.get('torchvision', '?')}, "
      f"{vers.get('python3', '?')}; {cuda}; driver {drv}", ""]
L += ["## Steps", "", "| step | status | seconds |", "|---|---|---:|"]
for line in steps_file.read_text().splitlines():
    n, s, d = line.split("\t")
    L.append(f"| {n} | {s} | {d} |")
L.append("| summary | ok | - |")
tl = (out / "gpu_tests.log").read_text().strip().splitlines() if (out / "gpu_tests.log").is_file() else []
res = next((l for l in reversed(tl) if re.search(r"\d+ (passed|failed|skipped|error)", l)), "no result line")
fails = [l for l in tl if l.startswith(("FAILED", "ERROR"))]
L += ["", "## GPU tests", "", f"`pytest -m gpu`: {res.strip('= ')}"] + [f"- {l}" for l in fails[:20]]
def demote(md):  # a sub-report's headings one level down, under this summary's sections
    return "\n".join(("#" + l) if l.startswith("#") else l for l in md.strip().splitlines())
L += ["", "## Key numbers", ""]
if tp:
    res = tp["results"]
    def span(key):
        v = [r[key] for r in res if r.get(key)]
        return f"{min(v):.2f} to {max(v):.2f}" if v else "-"
    L += [f"- kit / reference: {span('ratio_vs_reference')}; kit / ceiling: {span('fraction_of_ceiling')} "
          f"(the kit's default path: {tp.get('kit_execution')} steps)",
          f"- opt-in paths over the kit's default: CUDA graphs {span('graphs_vs_kit')}; "
          f"runs together {span('together_vs_one_run')}"]
    r50 = next((r for r in res if r["backbone"] == "resnet50" and r["batch"] == 32), None)
    if r50:
        L.append(f"- ResNet50, batch 32: kit {r50['kit_img_s']} img/s, reference {r50['reference_img_s']}, ceiling "
                 f"{r50['ceiling_img_s']}, kit / reference {r50['ratio_vs_reference']}")
    p = tp.get("projection") or {}
    if p.get("kit_all_hours") is not None or p.get("kit_table1_hours") is not None:
        L.append(f"- paper protocol, one run at a time: Tables 1+3+4 ({p.get('runs_all')} runs) kit "
                 f"{p.get('kit_all_hours')} h, reference {p.get('reference_all_hours')} h; Table 1 ({p.get('runs_table1')} "
                 f"runs) kit {p.get('kit_table1_hours')} h")
if grid:
    for fu in grid["fusions"]:
        if fu["mcr_mean"] is not None:
            L.append(f"- grid {fu['fusion']}: MCR {fu['mcr_mean']:.4f} ± {fu['mcr_std'] if fu['mcr_std'] is not None else float('nan'):.4f} "
                     f"over {fu['n']} folds")
tmd, gmd = out / "throughput.md", out / "grid.md"  # each starts with its own "# ..." heading
L += [""] + ([demote(tmd.read_text())] if tmd.is_file() else ["## Training throughput", "", "no throughput.md (see log.txt)"])
L += [""] + ([demote(gmd.read_text())] if gmd.is_file() else ["## Short real-data grid", "", "no grid.md (see log.txt)"])
cmd_ = out / "concurrency.md"
if cmd_.is_file():
    L += ["", "## Runs side by side (one process each, started together)", "", demote(cmd_.read_text())]
(out / "summary.md").write_text("\n".join(L) + "\n")
print("\n".join(L))
PYEOF

# the Markdown parts are inside summary.md; at most 8 files come back from a device call
[ -f "$OUT/summary.md" ] && rm -f "$OUT/throughput.md" "$OUT/grid.md" "$OUT/concurrency.md"
say "done in $(( $(date +%s) - T0 ))s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
rc=0
if grep -v $'\tskipped' "$STEPS" | grep -qv $'\tok\t'; then rc=1; say "some steps failed: see summary.md"; fi
rm -rf "$WORK"
exit $rc
