#!/usr/bin/env bash
# One-shot GPU suite (issue 13): the figures a lent GPU machine should produce, in at most 8 minutes.
#
#   bash benchmarks/gpu_suite.sh             # on the GPU machine (one H200, 16 cores, no network)
#   bash benchmarks/gpu_suite.sh --dry-run   # the same path at toy sizes on CPU (tests/test_gpu_suite.py)
#
# Needs only the installed package: `bash launch/setup.sh --cuda` once (jax with CUDA 12; torch is not
# needed, the loader row times the grain pipeline alone). Nothing is downloaded; every input is
# generated into a temp folder (or $ZSL_SUITE_DIR, kept). The hierarchy is built from WordNet 3.0
# (installed by setup.sh) and the three class lists in $ZSL_SUITE_META (default ../shared/data/imagenet:
# imagenet-testsets.json, winter_2021.txt, imagenet-xml-wnids.json; copy them next to the repo if the
# machine lacks ../shared). Rows of the final table:
#   hgr_rn50_step      the HGR-Net step through Engine.train(): CLIP RN50 (random weights) at 224 px in
#                      bfloat16, class-pure B = 256, K = 0.25, M = 0.5, topk, 256 negatives, on the real
#                      19,138-class hierarchy; step time, FLOPs and MFU from the engine's own accounting
#   eval_21k_d         the hierarchical evaluator over every 21K-D test class (generated 32x32 JPEGs,
#                      CLIP preprocess to 224): prompts encoded once, images/s, peak host RSS
#   dazle_awa2_full    python -m zsl_jax.main --config=configs/dazle_awa2.py on AWA2-sized generated
#                      features (50 classes, 85 attributes, 49 x 2048 regions, 300-d vectors), the full
#                      schedule (9,410 steps, evaluations every 470): wall time including compile
#   loader             benchmarks/loader.py: decode + CLIP preprocess images/s with N grain threads
#   dazle_input        benchmarks/dazle_input.py: DAZLE's input path (trainer's sampler, LoadFeatures, grain
#                      with N threads) over AWA2-shaped [2048, 7, 7] features (every 4th AWA2 row), rows/s
#                      of the full schedule in memory and chunk-aware (cache holding the split) from both
#                      hdf5 layouts, and memory-mapped from the converted .npy
# Each benchmark's own output is kept in $DIR/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."

dry=0
case "${1-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "$0: unknown option $1 (use --dry-run)" >&2; exit 2 ;;
esac
python=${PYTHON:-python}
meta=${ZSL_SUITE_META:-$(cd .. && pwd)/shared/data/imagenet}
dir=${ZSL_SUITE_DIR:-$(mktemp -d -t gpu_suite.XXXXXX)}
mkdir -p "$dir"
cores=$(nproc)
start=$(date +%s)

if [[ $dry == 1 ]]; then
  scale_args=(--dry-run)
  dazle_sizes="num_classes=6, num_unseen=2, num_val_classes=1, num_attributes=8"
  dazle_sizes+=", feature_dim=16, w2v_dim=12, images_per_class=4"
  dazle_steps=(--config.total_steps=20 --config.evals.gzsl.every_steps=10)
  loader_args=(--classes 4 --per_class 8 --size 64x48 --repeats 1 --threads 2)
  dazle_input_args=(--dry-run --only mem,holds --threads 2)
else
  scale_args=(--model RN50 --dtype bfloat16 --steps 200 --train-steps 8 --scan-workers "$cores"
              --eval-threads "$cores")
  dazle_sizes="num_classes=50, num_unseen=10, num_val_classes=3, num_attributes=85"  # AWA2's classes and attributes
  dazle_sizes+=", feature_dim=2048, w2v_dim=300, images_per_class=8"
  dazle_steps=(--config.total_steps=9410)
  loader_args=(--classes 39 --per_class 40 --repeats 2 --threads "$cores")
  dazle_input_args=(--scale 4 --only mem,holds --threads "$cores" --dir "$dir")
fi

echo "== gpu_suite: $(uname -n), $cores cores, load $(cut -d' ' -f1-3 /proc/loadavg), output in $dir" >&2
"$python" -c 'import jax; print("== jax", jax.__version__, jax.devices())' >&2

# 1 + 2: HGR step (engine accounting) and the 21K-D evaluator, one rehearsal run.
"$python" benchmarks/scale_21k.py "${scale_args[@]}" --meta "$meta" --json "$dir/scale.json" \
    > "$dir/scale.log" 2> "$dir/scale.err"

# 3: DAZLE, the full AWA2 schedule on generated AWA2-sized features (real file format, real config).
"$python" -c "
from zsl_jax.projects.attr.data import demo
demo.make_demo('$dir/awa2', 'AWA2', seed=0, $dazle_sizes)" 2> "$dir/dazle_data.err"
t0=$(date +%s.%N)
"$python" -m zsl_jax.main --config=configs/dazle_awa2.py --workdir="$dir/dazle_run" --config.data.root="$dir/awa2" \
    --config.data.in_memory=True --config.num_epochs=0 --config.log.progress=False "${dazle_steps[@]}" \
    > "$dir/dazle.log" 2>&1
t1=$(date +%s.%N)

# 4: loader images/s with N threads.
"$python" benchmarks/loader.py --no-torch "${loader_args[@]}" > "$dir/loader.log" 2>&1

# 5: DAZLE's feature input path, rows/s.
"$python" benchmarks/dazle_input.py "${dazle_input_args[@]}" > "$dir/dazle_input.log" 2> "$dir/dazle_input.err"

"$python" - "$dir" "$t0" "$t1" "$start" <<'EOF'
import json
import os
import pathlib
import sys
import time

d, t0, t1, start = pathlib.Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = json.loads((d / "scale.json").read_text())
tr, ev = s["train"], s["eval"]
hgr = f"{1e3 * tr['step_time']:.1f} ms/step" if tr["step_time"] else "no accounting"
if tr["flops"]:
  hgr += f", {tr['flops'] / 1e12:.3g} TFLOP/step, {tr['flops_per_sec'] / 1e12:.3g} TFLOP/s"
hgr += f", MFU {100 * tr['mfu']:.1f}%" if tr["mfu"] is not None else ", MFU n/a (no peak for this device)"
hgr += f"; compiles {tr['compile_time']:.0f} s; {len(s['host']['shapes'])} prompt shapes; data wait "
hgr += f"{tr['logged']:.2f}" if tr["logged"] is not None else f"{tr['measured']:.2f}"
hgr += f" ({s['model']}, {s['dtype']})"
images_s = ev["images"] / max(ev["run_wall"] - ev["prompt_s"], 1e-9)
evl = (f"{images_s:,.0f} images/s ({ev['images']:,} images, {ev['classes']:,} classes, {ev['prompts']:,} prompts "
       f"once in {ev['prompt_s']:.1f} s); peak RSS {ev['maxrss_mb']:,.0f} MiB")
records = [json.loads(line) for line in (d / "dazle_run" / "metrics.jsonl").read_text().splitlines()]
last = max(r["step"] for r in records)
steps = sorted(r["step_time"] for r in records if r["split"] == "train" and "step_time" in r)
evals = sum(r["split"] != "train" for r in records)
dz = f"{t1 - t0:.1f} s wall for {last:,} steps incl. compile and {evals} evaluations"
if steps:
  dz += f"; {1e3 * steps[len(steps) // 2]:.2f} ms/step (median of logged intervals)"
rows = [line.split() for line in (d / "loader.log").read_text().splitlines() if line.startswith("zsl_jax grain")]
ld = f"{float(rows[-1][-2]):,.0f} images/s with {os.cpu_count()} cores visible" if rows else "no result"
for line in (d / "loader.log").read_text().splitlines():
  if line.startswith("generated"):
    ld += f" ({line.split(';')[0]})"
layouts = ("official", "zsl_jax", "converted .npy")
inputs = [(line[:15].strip(), line[16:48].strip(), line.split()[-5])  # rows/s: 5th number from the end
          for line in (d / "dazle_input.log").read_text().splitlines() if line.startswith(layouts)]
di = "; ".join(f"{layout} {mode} {float(rate):,.0f} rows/s" for layout, mode, rate in inputs) or "no result"
di += f" (full AWA2 schedule, {os.cpu_count()} cores visible)"
table = [("hgr_rn50_step", hgr), ("eval_21k_d", evl), ("dazle_awa2_full", dz), ("loader", ld), ("dazle_input", di)]
w = max(len(k) for k, _ in table)
print(f"gpu_suite on {os.uname().nodename}: {time.time() - start:.0f} s total, {s['load']}")
print(f"| {'row':<{w}} | result |")
for k, v in table:
  print(f"| {k:<{w}} | {v} |")
EOF
