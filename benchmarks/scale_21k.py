"""ImageNet-21K rehearsal on CPU: the real hierarchy, a generated folder of every class, the product path.

Uses the real WordNet-source hierarchy (19,138 classes from the files in ../shared/data/imagenet) and
writes a folder tree holding every class (a few tiny 32x32 JPEGs each, from a fixed-seed pool), then
measures what scales with the number of classes, not with image size:

  - `make_splits`: the real command's files per second (wall time of the command, start-up included)
    and the index size on disk;
  - the HGR trainer at the paper's contrast shapes (class-pure B = 256, K = 0.25, M = 0.5, topk,
    256 negatives) with a tiny custom CLIP: host milliseconds per step of the trainer's own
    `AddContrasts` step map (sampling + dedupe + tokens), distinct compiled prompt shapes and text
    tokens encoded per useful token (packed rows); and the data-wait fraction of a short `Engine.train()` run;
  - the hierarchical evaluator over every 21K-D test class in a fresh process: prompts encoded once,
    images per second and the process's peak RSS (`ru_maxrss`).

  python benchmarks/scale_21k.py                      # all 19,138 classes, ~100K JPEGs (minutes on 2 cores)
  python benchmarks/scale_21k.py --classes 2000 --images-per-class 3
  python benchmarks/scale_21k.py --dry-run            # a few hundred classes, seconds (tests, GPU suite)
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import hgr_rn50  # noqa: E402  pylint: disable=wrong-import-position
from zsl_jax import engine as engine_lib  # noqa: E402  pylint: disable=wrong-import-position
from zsl_jax.data import images  # noqa: E402  pylint: disable=wrong-import-position
from zsl_jax.projects.hgr import trainer as hgr  # noqa: E402  pylint: disable=wrong-import-position
from zsl_jax.projects.hgr.data import batchers  # noqa: E402  pylint: disable=wrong-import-position
from zsl_jax.projects.hgr.hierarchy import splits as splits_lib  # noqa: E402  pylint: disable=wrong-import-position

DATA = REPO.parent / "shared" / "data" / "imagenet"
POOL = 256  # Distinct JPEGs in the generator's pool; files cycle through them (seeded).


def load_line():
  return "load %.2f %.2f %.2f on %d cores" % (*os.getloadavg(), os.cpu_count())


def cpu_times():
  """(own CPU seconds, children's CPU seconds) so far."""
  own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def run_tool(args, log):
  """Runs a `python -m zsl_jax.tools.*` command; returns (wall s, child CPU s, stdout)."""
  t0, (_, c0) = time.perf_counter(), cpu_times()
  done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, check=False)
  wall, cpu = time.perf_counter() - t0, cpu_times()[1] - c0
  if done.returncode:
    sys.exit(f"{' '.join(args[:1])} failed:\n{done.stdout}\n{done.stderr}")
  log(done.stdout.strip())
  return wall, cpu, done.stdout


def class_inputs(work, meta, classes, seed):
  """(testsets, winter21) paths: the real files, or a winter-2021 list cut to `classes` classes."""
  testsets, winter21 = meta / "imagenet-testsets.json", meta / "winter_2021.txt"
  missing = [str(p) for p in (testsets, winter21, meta / "imagenet-xml-wnids.json") if not p.exists()]
  if missing:
    sys.exit(f"missing {', '.join(missing)}; pass --meta <folder with imagenet-testsets.json, winter_2021.txt and "
             "imagenet-xml-wnids.json> (../shared/data/imagenet on this project's machines)")
  if not classes:
    return testsets, winter21
  ts = splits_lib.read_testsets(testsets)
  w21 = splits_lib.read_wnid_list(winter21)
  seen_all = [w for w in ts["train"] if w in set(w21)]
  n_seen = max(2, round(classes * len(seen_all) / 19138))
  rng = np.random.default_rng(seed)
  seen = list(rng.choice(seen_all, n_seen, replace=False))
  rest = sorted(set(ts["all"]) & set(w21) - set(seen_all))
  unseen = list(rng.choice(rest, max(1, classes - n_seen), replace=False))
  cut = work / "winter_2021_cut.txt"
  cut.write_text("\n".join(sorted(seen + unseen)) + "\n")
  return testsets, cut


def write_tree(root, class_splits, per_class, train_per_class, val_per_class, seed):
  """ILSVRC train/val folders for the seen classes and an ImageNet-21K folder per class; returns file count."""
  rng = np.random.default_rng(seed)
  pool = [images.encode_jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), quality=85) for _ in range(POOL)]
  pick = iter(rng.integers(0, POOL, 10 ** 7).tolist())
  count, val_id = 0, 0

  def write(folder, names):
    nonlocal count
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
      (folder / n).write_bytes(pool[next(pick)])
    count += len(names)

  for w in class_splits["train"]:
    write(root / "ilsvrc" / "train" / w, [f"{w}_{i}.JPEG" for i in range(train_per_class)])
    write(root / "ilsvrc" / "val" / w, [f"ILSVRC2012_val_{val_id + i:08d}.JPEG" for i in range(val_per_class)])
    val_id += val_per_class
  for w in class_splits["all"]:
    write(root / "imagenet21k" / w, [f"{w}_{i}.JPEG" for i in range(per_class)])
  return count


def dir_bytes(path):
  return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


TINY = dict(embed_dim=32, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=8, transformer_width=32,
            transformer_heads=1, transformer_layers=1)


def make_config(work, steps, workers, model="tiny", dtype="float32"):
  """configs/hgr_rn50.py at the paper's contrast shapes with the generated data; a tiny custom CLIP or a preset."""
  c = hgr_rn50.get_config()
  c.data.hierarchy = str(work / "hier" / "hierarchy.json")
  c.data.index = str(work / "index")
  c.data.num_workers = workers
  c.model.name = "custom" if model == "tiny" else model
  c.model.custom = TINY
  c.compute_dtype = dtype
  c.num_epochs, c.total_steps = 0.0, steps
  c.checkpoint.every_steps = 10 ** 6
  c.log.every_steps = max(1, steps // 2)
  c.log.progress, c.log.tensorboard = False, False
  return c


def contrast_host_work(trainer, steps):
  """The trainer's AddContrasts map over `steps` steps: ms per step, prompt shapes, padding."""
  rows = trainer.index.rows(trainer.config.data.train_split, trainer.config.data.train_classes)
  classes = batchers.ClassPureSampler(trainer.index.labels(rows), rows, trainer.config.batch_size,
                                      trainer.config.seed)
  step_map = hgr.AddContrasts(trainer.sampler, classes, trainer.tokens, trainer.config.seed)
  ms, shapes, pad, useful = [], set(), [], []
  cpu0 = time.process_time()
  for step in range(steps):
    t0 = time.perf_counter()
    out = step_map(step, {})
    ms.append(1e3 * (time.perf_counter() - t0))
    n = int(out["num_prompts"])
    shapes.add(out["prompt_tokens"].shape)
    useful_tokens, encoded_tokens = hgr.text_tokens(out, step_map.layout)  # packed rows: count tokens
    pad.append(encoded_tokens / max(useful_tokens, 1))
    useful.append(n)
  return {"median_ms": statistics.median(ms), "p99_ms": float(np.percentile(ms, 99)),
          "cpu_ms": 1e3 * (time.process_time() - cpu0) / steps, "shapes": sorted(shapes),
          "padding": float(np.mean(pad)), "prompts_median": statistics.median(useful), "prompts_max": max(useful)}


class TimedIterator:
  """Wraps the trainer's iterator: records how long each next() blocks (no get_state: not checkpointed)."""

  def __init__(self, it):
    self.it, self.calls = it, []

  def __iter__(self):
    return self

  def __next__(self):
    t0 = time.perf_counter()
    batch = next(self.it)
    self.calls.append((t0, time.perf_counter()))
    return batch


def train_run(engine, workdir):
  """A short Engine.train(); data-wait fraction from metrics.jsonl when the engine logs it, else measured here."""
  timed = []
  original = engine.trainer.train_iterator
  engine.trainer.train_iterator = lambda: timed.append(TimedIterator(original())) or timed[-1]
  t0, c0 = time.perf_counter(), time.process_time()
  engine.train()
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  calls = timed[0].calls[1:]  # After the first step's compile.
  span = calls[-1][1] - calls[0][0]
  measured = sum(b - a for a, b in calls) / span if span > 0 else float("nan")
  records = [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
             if r.get("split") == "train" and "data_wait_fraction" in r]
  mean = lambda key: statistics.mean(r[key] for r in records if key in r) if any(key in r for r in records) else None
  return {"wall": wall, "cpu": cpu, "measured": measured, "steps_timed": len(calls), "records": len(records),
          "logged": mean("data_wait_fraction"), "step_time": records[-1]["step_time"] if records else None,
          "compile_time": sum(r.get("compile_time", 0.0) for r in records), "flops": mean("flops"),
          "mfu": mean("mfu"), "flops_per_sec": mean("flops_per_sec")}


def eval_child(work, a):
  """In a fresh process: the hierarchical evaluator over every 21K-D test class; prints one JSON line.

  Prompt encoding is timed inside the evaluator's own call (blocked until ready); images/s is the
  rest of `run` (decode, image tower, scoring, counts), first-batch compile included.
  """
  c = make_config(work, 1, 0, a.model, a.dtype)
  c.evals["in21k_d"].num_threads = a.eval_threads
  engine = engine_lib.Engine(c, work / "eval_run")
  state = engine.build_state(with_optimizer=False)
  ev = engine.build_evaluators()["in21k_d"].evaluator
  rows, spent = [], []
  encode = ev.offer["encode_prompts"]

  def counted(variables, tokens):
    t0 = time.perf_counter()
    out = jax.block_until_ready(encode(variables, tokens))
    rows.append(len(tokens))
    spent.append(time.perf_counter() - t0)
    return out

  ev.offer = {**ev.offer, "encode_prompts": counted}
  t0, c0 = time.perf_counter(), time.process_time()
  results = ev.run(state, 0)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  print(json.dumps({"images": results["count"], "classes": results["num_classes"], "prompt_rows": sum(rows),
                    "prompts": len(ev.offer["prompt_tokens"]), "prompt_calls": len(rows), "prompt_s": sum(spent),
                    "run_wall": wall, "run_cpu": cpu,
                    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def prepare(work, a, log):
  """Hierarchy (real build_hierarchy command), folder tree, index (real make_splits command, timed)."""
  meta = pathlib.Path(a.meta)
  testsets, winter21 = class_inputs(work, meta, a.classes, a.seed)
  run_tool(["zsl_jax.tools.build_hierarchy", "--source", "wordnet", "--universe",
            str(meta / "imagenet-xml-wnids.json"), "--testsets", str(testsets), "--winter21", str(winter21),
            "--p_list", "none", "--out", str(work / "hier")], log)
  cs = json.loads((work / "hier" / "class_splits.json").read_text())
  t0 = time.perf_counter()
  files = write_tree(work / "tree", cs, a.images_per_class, a.train_per_class, a.val_per_class, a.seed)
  gen_s = time.perf_counter() - t0
  log(f"wrote {files:,} JPEGs in {len(cs['all']):,} + {2 * len(cs['train']):,} class folders in {gen_s:.1f} s")
  tree = work / "tree"
  wall, cpu, _ = run_tool(["zsl_jax.tools.make_splits", "--hierarchy", str(work / "hier"),
                           "--ilsvrc_train", str(tree / "ilsvrc" / "train"),
                           "--ilsvrc_val", str(tree / "ilsvrc" / "val"),
                           "--imagenet21k", str(tree / "imagenet21k"), "--out", str(work / "index"),
                           "--seed", str(a.seed), "--workers", str(a.scan_workers)], log)
  indexed = json.loads((work / "index" / "meta.json").read_text())["num_images"]
  return {"classes": len(cs["all"]), "seen": len(cs["train"]), "rest": len(cs["rest"]), "files": files,
          "indexed": indexed, "gen_s": gen_s, "splits_wall": wall, "splits_cpu": cpu,
          "index_mb": dir_bytes(work / "index") / 2 ** 20}


def train_phase(work, a):
  """The trainer's step map over `a.steps` steps, then a short Engine.train() for the data-wait fraction."""
  c = make_config(work, a.train_steps, a.loader_workers, a.model, a.dtype)
  c.evals = {}
  engine = engine_lib.Engine(c, work / "train_run")
  host = contrast_host_work(engine.trainer, a.steps)
  host["g_max"] = engine.trainer.sampler.g_max
  return host, train_run(engine, work / "train_run")


def eval_phase(work, a):
  out = subprocess.run([sys.executable, __file__, "--eval-child", str(work), "--eval-threads", str(a.eval_threads),
                        "--model", a.model, "--dtype", a.dtype],
                       cwd=REPO, capture_output=True, text=True, check=False)
  if out.returncode:
    sys.exit(f"evaluator process failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def engine_step(train):
  """The engine's own accounting of the short run (metrics.jsonl): step time, compile, FLOPs, MFU."""
  if train["step_time"] is None:
    return "no accounting in metrics.jsonl (engine without chrono)"
  out = f"{1e3 * train['step_time']:.1f} ms/step (last interval), compiles {train['compile_time']:.1f} s"
  if train["flops"]:
    out += f", {train['flops'] / 1e12:.3g} TFLOP/step, {train['flops_per_sec'] / 1e12:.3g} TFLOP/s"
  if train["mfu"] is not None:
    out += f", MFU {100 * train['mfu']:.1f}%"
  return out


def table(sizes, host, train, ev, a):
  """The rehearsal table, one row per figure."""
  wait = f"{train['measured']:.3f} measured here (time blocked in next())"
  if train["logged"] is not None:
    wait = f"{train['logged']:.3f} engine (mean of {train['records']} logged intervals), {wait}"
  shapes = ", ".join(f"[{r}, {L}]" for r, L in host["shapes"])
  images_s = ev["images"] / max(ev["run_wall"] - ev["prompt_s"], 1e-9)
  rows = [
      ("make_splits files/s", f"{sizes['indexed'] / sizes['splits_wall']:,.0f} ({sizes['indexed']:,} files indexed "
       f"in {sizes['splits_wall']:.1f} s wall, {sizes['splits_cpu']:.1f} s CPU, start-up included)"),
      ("index size on disk", f"{sizes['index_mb']:.2f} MiB ({sizes['index_mb'] * 2 ** 20 / sizes['indexed']:.1f} "
       "bytes per image)"),
      ("host ms/step (sampling+dedupe+tokens)", f"median {host['median_ms']:.2f}, p99 {host['p99_ms']:.2f} "
       f"(CPU {host['cpu_ms']:.2f} ms/step mean) over {a.steps} steps"),
      ("unique prompts/step", f"median {host['prompts_median']:.0f}, max {host['prompts_max']}"),
      ("compiled prompt shapes", f"{len(host['shapes'])} over {a.steps} steps: {shapes}"),
      ("text tokens encoded per useful token", f"{host['padding']:.2f} mean"),
      ("data-wait fraction", f"{wait}; {train['steps_timed']} steps after compile, train() "
       f"{train['wall']:.1f} s wall / {train['cpu']:.1f} s CPU incl. compiles"),
      ("engine step", engine_step(train)),
      ("eval prompts encoded once", f"{ev['prompts']:,} prompts ({ev['prompt_rows']:,} rows in {ev['prompt_calls']} "
       f"calls, {ev['prompt_s']:.1f} s incl. compile)"),
      ("eval images/s", f"{images_s:,.0f} ({ev['images']:,} images of {ev['classes']:,} classes; run "
       f"{ev['run_wall']:.1f} s wall, {ev['run_cpu']:.1f} s CPU)"),
      ("eval peak host memory", f"{ev['maxrss_mb']:,.0f} MiB (ru_maxrss of the evaluating process)"),
  ]
  width = max(len(r[0]) for r in rows)
  return "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows)


def model_words(a):
  if a.model == "tiny":
    return f"tiny custom CLIP (embed {TINY['embed_dim']}, {TINY['image_resolution']} px), {a.dtype}"
  return f"CLIP {a.model} (random weights), {a.dtype}"


def parse(argv):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--classes", type=int, default=0, help="classes to keep (0: all 19,138 of the WordNet source)")
  ap.add_argument("--images-per-class", type=int, default=5, help="ImageNet-21K JPEGs per class folder")
  ap.add_argument("--train-per-class", type=int, default=8, help="ILSVRC train JPEGs per seen class")
  ap.add_argument("--val-per-class", type=int, default=2, help="ILSVRC val JPEGs per seen class")
  ap.add_argument("--steps", type=int, default=500, help="steps of the trainer's step map (host work, shapes)")
  ap.add_argument("--train-steps", type=int, default=20, help="steps of the short Engine.train() run")
  ap.add_argument("--loader-workers", type=int, default=0, help="grain worker processes of the training run")
  ap.add_argument("--scan-workers", type=int, default=8, help="make_splits --workers")
  ap.add_argument("--eval-threads", type=int, default=8, help="decode threads of the evaluator")
  ap.add_argument("--model", default="tiny", help="tiny (custom CLIP, 32 px) or a CLIP preset, e.g. RN50 (224 px)")
  ap.add_argument("--dtype", default="float32", help="config.compute_dtype (float32 | bfloat16)")
  ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
  ap.add_argument("--meta", default=str(DATA), help="folder with imagenet-testsets.json, winter_2021.txt and "
                  "imagenet-xml-wnids.json (the hierarchy's inputs)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--root", default=None, help="keep the generated data here (default: a temp dir, removed)")
  ap.add_argument("--dry-run", action="store_true", help="300 classes, 2 images each, 40 steps: seconds")
  ap.add_argument("--eval-child", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.dry_run:
    a.classes, a.images_per_class, a.train_per_class, a.val_per_class = 300, 2, 3, 1
    a.steps, a.train_steps = 40, 4
  return a


def main(argv=None):
  a = parse(argv)
  if a.eval_child:
    return eval_child(pathlib.Path(a.eval_child), a)
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  with tempfile.TemporaryDirectory(prefix="scale21k_") as tmp:
    work = pathlib.Path(a.root or tmp)
    work.mkdir(parents=True, exist_ok=True)
    load0, t0 = load_line(), time.perf_counter()
    sizes = prepare(work, a, log)
    host, train = train_phase(work, a)
    ev = eval_phase(work, a)
    print(f"ImageNet-21K rehearsal: {sizes['classes']:,} classes ({sizes['seen']:,} seen, {sizes['rest']:,} 21K-D "
          f"test), {sizes['files']:,} JPEGs 32x32 ({a.images_per_class}/class, ILSVRC {a.train_per_class} train + "
          f"{a.val_per_class} val per seen class); B=256 class-pure, K=0.25, M=0.5, topk, 256 negatives; "
          f"{model_words(a)}; {a.steps} host steps, {a.train_steps} engine steps; "
          f"{load0} at start, {load_line()} at end; {time.perf_counter() - t0:.0f} s total")
    print(table(sizes, host, train, ev, a))
    if a.json:
      pathlib.Path(a.json).write_text(json.dumps({"sizes": sizes, "host": host, "train": train, "eval": ev,
                                                  "model": a.model, "dtype": a.dtype, "load": load_line()},
                                                 default=str, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
