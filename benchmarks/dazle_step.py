r"""DAZLE train step at AWA2 shapes: the zsl_jax engine's step vs the official DAZLE step in torch.

  python benchmarks/dazle_step.py [--threads 1] [--steps 10] [--warmup 2]
  python benchmarks/dazle_step.py --dry-run          # tiny shapes, seconds (CI and the GPU suite)

zsl_jax side: the product path. `Engine(config).build_state(with_optimizer=True)` and
`make_train_step()` of configs/dazle_awa2.py, fed by the DAZLE trainer's own `train_iterator()`
(balanced sampler, batch_size 50 -> 40 classes x 1 image) through `sharding.global_batch`, on an
AWA2-shaped benchmark written by the project's demo generator (50 classes, 40 seen, 85 attributes,
49 x 2048 regions, 300-d attribute vectors) and held in memory. Torch side: the official DAZLE
forward, CE over all classes + 0.1 x self-calibration and torch.optim.RMSprop (the torch reference
of tests/test_dazle_parity.py, in float32), on the same in-memory features in the official [N, 2048,
7, 7] layout and batches drawn by the same balanced rule. Both sides compute the same loss,
gradients and update; each orders its contractions its own way (zsl_jax: one GEMM of region scores,
the cheaper of V W or x W^T first, see zsl_jax/projects/attr/models/attention.py; torch: the
official einsums). The ratio is printed for data + step and for the step alone. Both sides get the
same threads: torch.set_num_threads(N) with OMP_WAIT_POLICY=PASSIVE, XLA's CPU client limited to N
intra-op threads; the table shows CPU time beside wall time (CPU/wall near N confirms it). Steps
alternate between the sides so that a change of machine load hits both alike. Compile time is
reported apart from the per-step medians. The iterator's read-ahead threads refill its buffer while
either side runs: their CPU is moved out of every timed call into the zsl_jax data column.

VSMR row: configs/vsmr_awa2.py's engine step (visual branch on the same attention core, attribute
classifier, semantic autoencoder) on the same files and batch (batch_size 50 -> 40 images instead of
the recipe's 2000); zsl_jax only, as no torch VSMR reference is shipped. Timed after the DAZLE pair,
once its iterator is closed (each read-ahead buffer can hold GBs of batches). `--no-vsmr` leaves it out.
"""
import argparse
import importlib
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

AWA2_TRAINVAL = 23527  # images of the AWA2 trainval split (xlsa17 proposed split)
OFFICIAL_STEPS = AWA2_TRAINVAL * 20 // 50  # DAZLE_AWA2.ipynb: niters = ntrain * epochs // batch_size = 9410
AWA2 = dict(num_classes=50, num_unseen=10, num_val_classes=3, num_attributes=85, feature_dim=2048, w2v_dim=300,
            images_per_class=4)  # 3 trainval + 1 test-seen image per seen class: enough for balanced batches
TINY = dict(num_classes=6, num_unseen=2, num_val_classes=1, num_attributes=8, feature_dim=16, w2v_dim=12,
            images_per_class=3)


def limit_threads(n):
  """Before jax and torch are imported: N intra-op threads for XLA and OpenMP, passive OpenMP waiting.

  One XLA device (any forced host device count is dropped): the comparison is per thread count.
  """
  os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
  os.environ["OMP_NUM_THREADS"] = str(n)
  drop = ("--xla_force_host_platform_device_count", "--xla_cpu_multi_thread_eigen", "intra_op_parallelism_threads")
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(drop)]
  flags += [f"--xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'}", f"intra_op_parallelism_threads={n}"]
  os.environ["XLA_FLAGS"] = " ".join(flags)


def make_config(files, name="dazle_awa2"):
  """configs/<name>.py on the generated files: in memory, trained as the notebook (trainval, K = 50)."""
  config = importlib.import_module(f"configs.{name}").get_config()
  config.batch_size = 50  # DAZLE's recipe; VSMR's 2000 (40 x 50 images) would need a far larger benchmark
  config.data.update(hdf5=files["hdf5"], att_splits=files["att_splits"], res101=files["res101"], w2v=files["w2v"],
                     in_memory=True, demo=False)
  config.zsl.select_on = "test_reference"  # the notebooks' protocol: 40 seen training classes, 10 unseen
  return config


def read_ahead_cpu():
  """CPU seconds of this process's Python threads but the main one: the grain iterators' read-ahead.

  XLA's and torch's worker threads are native threads, not listed by `threading`, so they stay in.
  """
  total = 0.0
  for t in threading.enumerate():
    if t is not threading.main_thread() and t.ident is not None:
      try:
        total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
      except OSError:  # ended meanwhile
        pass
  return total


class Timer:
  """Wall and CPU seconds of each timed call: process CPU (all threads) less the read-ahead threads'.

  The iterator refills its buffer in the background while either side runs; that CPU is the
  zsl_jax side's data cost, counted there (`JaxSide.read_ahead`), not in whichever call it overlapped.
  """

  def __init__(self):
    self.wall, self.cpu = [], []

  def __call__(self, fn, *args):
    w0, c0, r0 = time.perf_counter(), time.process_time(), read_ahead_cpu()
    out = fn(*args)
    self.wall.append(time.perf_counter() - w0)
    self.cpu.append(time.process_time() - c0 - max(read_ahead_cpu() - r0, 0.0))
    return out

  def median(self, skip):
    return statistics.median(self.wall[skip:]), statistics.median(self.cpu[skip:])


class JaxSide:
  """The engine's jitted step, compiled once ahead of the timed calls, fed by the trainer's iterator."""

  def __init__(self, config, workdir):
    import jax  # pylint: disable=import-outside-toplevel

    from zsl_jax import engine as engine_lib  # pylint: disable=import-outside-toplevel
    from zsl_jax import sharding  # pylint: disable=import-outside-toplevel
    engine_lib.trainer_class(config).check_config(config)
    self.engine = engine_lib.Engine(config, workdir)
    self.state = self.engine.build_state(with_optimizer=True)
    self.data_iter = self.engine.trainer.train_iterator()
    keys = tuple(getattr(self.engine.trainer, "replicated_batch_keys", ()))  # as train_loop.TrainLoop
    self.global_batch = lambda: sharding.global_batch(next(self.data_iter), self.engine.mesh, keys)
    self.block = jax.block_until_ready
    self.data, self.steps, self.compile = Timer(), Timer(), Timer()
    batch = self.global_batch()
    self.batch_size = batch["label"].shape[0]
    self.step = self.compile(lambda: self.engine.make_train_step().lower(self.state, batch).compile())
    self.loss = math.nan
    self.read_ahead, self._read_ahead_at = [], None  # read-ahead CPU s from one step's start to the next's

  def _step(self, batch):
    state, measured = self.step(self.state, batch)
    return self.block((state, measured))  # timed to completion, not to dispatch

  def run_step(self):
    now = read_ahead_cpu()
    if self._read_ahead_at is not None:
      self.read_ahead.append(max(now - self._read_ahead_at, 0.0))
    self._read_ahead_at = now
    batch = self.data(self.global_batch)  # {'features' [B, R, F], 'label' [B], 'index' [B]}
    self.state, measured = self.steps(self._step, batch)
    self.loss = float(measured["loss"])

  def data_cpu(self, skip):
    """Median CPU s per batch: next() plus the read-ahead threads' work between two steps."""
    return self.data.median(skip)[1] + statistics.median(self.read_ahead[skip:] or [0.0])

  def close(self):
    """Stops the iterator's read-ahead threads and frees their buffered batches."""
    getattr(self.data_iter, "close", lambda: None)()


class TorchSide:
  """The official DAZLE step (forward, CE + λ·self-calibration, RMSprop) on the same features."""

  def __init__(self, trainer, config):
    import torch  # pylint: disable=import-outside-toplevel

    from tests.test_dazle_parity import TorchDAZLE  # pylint: disable=import-outside-toplevel
    from zsl_jax.data import sampling  # pylint: disable=import-outside-toplevel
    ds, universe = trainer.dataset, trainer.train_universe
    classes = np.arange(len(universe["classes"]))
    feats = ds.features.get_batch(np.arange(len(ds.labels)))  # [N, R, F]
    n, r, f = feats.shape
    side = math.isqrt(r)
    self.fmap = torch.from_numpy(np.ascontiguousarray(feats.transpose(0, 2, 1))).reshape(n, f, side, r // side)
    self.position = trainer.train_positions()[ds.labels]  # [N] class position in the universe
    rows = ds.split(trainer.train_split)
    self.sampler = sampling.BalancedSampler(rows, ds.labels[rows], config.batch_size, config.seed)
    unseen = universe["unseen"]
    self.model = TorchDAZLE(np.asarray(ds.w2v, np.float64), trainer.att.astype(np.float64), classes[~unseen],
                            classes[unseen], normalize_V=config.model.normalize_V,
                            normalize_F=config.model.normalize_F, is_bias=True, lam=config.loss.lam,
                            feature_dim=f).float()
    o = config.optim
    self.opt = torch.optim.RMSprop([p for p in self.model.parameters() if p.requires_grad], lr=o.lr, alpha=o.rms_decay,
                                   eps=o.eps, weight_decay=o.weight_decay, momentum=o.momentum)
    self.torch = torch
    self.data, self.steps = Timer(), Timer()
    self.count, self.loss = 0, math.nan

  def _batch(self):
    rows = self.sampler(self.count)
    return self.fmap[self.torch.from_numpy(rows)], self.torch.from_numpy(self.position[rows])  # [B, F, 7, 7], [B]

  def _step(self, x, y):
    self.opt.zero_grad()
    loss = self.model.loss(self.model(x), y)
    loss.backward()
    self.opt.step()
    return loss.item()

  def run_step(self):
    x, y = self.data(self._batch)
    self.loss = self.steps(self._step, x, y)
    self.count += 1


def generate(out_dir, sizes):
  """The AWA2-shaped benchmark files, written by the project's demo generator."""
  from zsl_jax.projects.attr.data import demo  # pylint: disable=import-outside-toplevel
  return demo.make_demo(out_dir, "AWA2", seed=0, **sizes)


def _ms(seconds):
  return f"{seconds * 1e3:9.1f}"


def report(jax_side, torch_side, threads, skip, loads, config, vsmr_side=None):
  """Prints the one table: per side compile, data and step medians (wall and CPU), ratio, projection."""
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  f = jax_side.engine.trainer.dataset.features
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores; JAX {jax.__version__} on {jax.default_backend()} "
        f"({dev.device_kind}); torch {torch.__version__} on CPU; load average (1 min) before {loads[0]:.2f}, "
        f"after {loads[1]:.2f}")
  print(f"shapes: batch {jax_side.batch_size} (batch_size {config.batch_size}, balanced sampler), regions "
        f"{f.num_regions} x {f.feature_dim}, attributes {jax_side.engine.trainer.dataset.num_attributes}, classes "
        f"{len(jax_side.engine.trainer.train_universe['classes'])}; RMSprop lr {config.optim.lr:g}, momentum "
        f"{config.optim.momentum:g}, wd {config.optim.weight_decay:g}")
  print(f"threads: {threads} per side (torch.set_num_threads({torch.get_num_threads()}), OMP_WAIT_POLICY="
        f"{os.environ['OMP_WAIT_POLICY']}; XLA_FLAGS={os.environ['XLA_FLAGS']}); "
        f"medians of {len(jax_side.steps.wall) - skip} alternating steps after {skip} warm-up")
  print(f"{'side':<34}{'compile s':>10}{'data ms':>10}{'data CPU ms':>12}{'step ms':>10}{'step CPU ms':>12}"
        f"{'CPU/wall':>9}{'loss':>9}")
  totals, steps = [], []
  rows = [("zsl_jax (Engine.make_train_step)", jax_side), ("official DAZLE step (torch)", torch_side)]
  if vsmr_side:
    rows.append((f"zsl_jax VSMR (Engine, batch {vsmr_side.batch_size})", vsmr_side))
  for name, side in rows:
    wall, cpu = side.steps.median(skip)
    data_wall, data_cpu = side.data.median(skip)
    data_cpu = side.data_cpu(skip) if hasattr(side, "data_cpu") else data_cpu
    compile_s = f"{side.compile.wall[0]:10.1f}" if hasattr(side, "compile") else f"{'-':>10}"
    print(f"{name:<34}{compile_s}{_ms(data_wall):>10}{_ms(data_cpu):>12}{_ms(wall):>10}{_ms(cpu):>12}{cpu / wall:9.2f}"
          f"{side.loss:9.4f}")
    totals.append((data_wall + wall, data_cpu + cpu))
    steps.append((wall, cpu))
  (j_wall, j_cpu), (t_wall, t_cpu) = totals[:2]
  (js_wall, js_cpu), (ts_wall, ts_cpu) = steps[:2]
  c_wall, c_cpu = jax_side.compile.wall[0], jax_side.compile.cpu[0]
  print(f"compile: XLA lower + compile of the engine's step {c_wall:.1f} s wall, {c_cpu:.1f} s CPU (torch: none)")
  if min(j_cpu / j_wall, t_cpu / t_wall) < 0.8 * threads:
    print(f"note: CPU/wall below {threads}: the process waited for free cores (see the load); compare CPU times")
  print(f"ratio official/zsl_jax (framework: the same computation on both sides, each in its own contraction "
        f"order), data + step: wall {t_wall / j_wall:.2f}x, CPU {t_cpu / max(j_cpu, 1e-9):.2f}x; step alone: wall "
        f"{ts_wall / js_wall:.2f}x, CPU {ts_cpu / max(js_cpu, 1e-9):.2f}x")
  j_steps = math.ceil(config.num_epochs * AWA2_TRAINVAL / config.batch_size)
  print(f"projected full AWA2 schedule (steps x median data + step; evaluations not included): zsl_jax {j_steps} "
        f"steps {j_steps * j_wall / 60:.1f} min wall ({j_steps * j_cpu / 60:.1f} min CPU), official {OFFICIAL_STEPS} "
        f"steps {OFFICIAL_STEPS * t_wall / 60:.1f} min wall ({OFFICIAL_STEPS * t_cpu / 60:.1f} min CPU)")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--threads", type=int, default=1, help="intra-op threads for each side (XLA and torch)")
  p.add_argument("--steps", type=int, default=10, help="timed steps per side, after the warm-up")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
  p.add_argument("--dry-run", action="store_true", help="tiny shapes and 2 steps: checks the path in seconds")
  p.add_argument("--no-vsmr", action="store_true", help="leave out the VSMR row")
  args = p.parse_args(argv)
  if args.threads < 1 or args.steps < 1 or args.warmup < 0:
    p.error("--threads and --steps must be at least 1, --warmup at least 0")
  if args.dry_run:
    args.steps, args.warmup = 2, 1
  limit_threads(args.threads)
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  with tempfile.TemporaryDirectory(prefix="dazle_step_") as tmp:
    files = generate(os.path.join(tmp, "data"), TINY if args.dry_run else AWA2)
    config = make_config(files)
    loads = [os.getloadavg()[0]]
    jax_side = JaxSide(config, os.path.join(tmp, "work"))
    torch_side = TorchSide(jax_side.engine.trainer, config)
    for _ in range(args.warmup + args.steps):
      jax_side.run_step()
      torch_side.run_step()
    jax_side.close()
    vsmr_side = None if args.no_vsmr else JaxSide(make_config(files, "vsmr_awa2"), os.path.join(tmp, "work_vsmr"))
    for _ in range(0 if args.no_vsmr else args.warmup + args.steps):
      vsmr_side.run_step()
    if vsmr_side:
      vsmr_side.close()
    loads.append(os.getloadavg()[0])
    if args.dry_run:
      print("dry run: tiny shapes, checks the path only; these figures measure nothing")
    report(jax_side, torch_side, args.threads, args.warmup, loads, config, vsmr_side)


if __name__ == "__main__":
  main()
