"""HGR-Net train step through the real path: the engine's jitted step vs the official torch recipe.

zsl_jax side: `Engine.build_state(with_optimizer=True)` + `Engine.make_train_step()`, fed by the HGR
trainer's own `train_iterator()` on the embedded demo data (configs/hgr_rn50.py:demo) with CLIP RN50
sizes at --resolution px, class-pure batches, K = 0.25, M = 0.5, topk and every candidate as a
negative. Each step encodes the step's unique prompts once, packed end to end into rows of 64 tokens
(the trainer's static chunks; the chunks in use only). `--breakdown` also times the step's parts.

torch side: the official recipe (the reference `main.py` loop with `tree_model` losses) on the
*same sampled contrasts*: open_clip CLIP with the same sizes (random weights), the image tower once, the text
tower re-run per (outer, inner) contrast on full 77-token prompts, OM loss with adaptive weights,
clip_grad_norm_(1.0), AdamW (+ SGD on θ). Both in float32 on CPU.

Both sides get the same number of threads (--threads, default 1): torch.set_num_threads(N) with
OMP_WAIT_POLICY=PASSIVE set before torch is imported; XLA CPU limited by XLA_FLAGS (one thread:
--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1) and, for both, the process's
CPU affinity cut to N cores. CPU time (process) is printed beside wall time so that contention on
a loaded machine is visible; the CPU/wall column checks the thread limit.

  python benchmarks/hgr_step.py                       # RN50 @ 64 px, batch 4, 1 thread (minutes)
  python benchmarks/hgr_step.py --dry-run             # tiny CLIP, seconds (the test suite runs this)
  python benchmarks/hgr_step.py --aot [--remat_text blocks]   # paper shapes, compiled, not run
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def limit_threads(n, extra_xla_flags=""):
  """Same thread budget for XLA and torch; must run before jax or torch is imported."""
  os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
  for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(n)
  eigen = "false" if n == 1 else "true"
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), extra_xla_flags,
                                      f"--xla_cpu_multi_thread_eigen={eigen}",
                                      f"intra_op_parallelism_threads={n}"]).strip()
  cpus = sorted(os.sched_getaffinity(0))
  if n < len(cpus):
    os.sched_setaffinity(0, cpus[:n])


def parse_args(argv):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--threads", type=int, default=1, help="threads for both XLA and torch")
  ap.add_argument("--batch", type=int, default=4, help="images per class-pure step (>= 4)")
  ap.add_argument("--resolution", type=int, default=64)
  ap.add_argument("--iters", type=int, default=3, help="timed steps per side after --warmup")
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--sampler", default="topk", choices=("topk", "random"),
                  help="negatives (every candidate either way); topk is the paper's, random draws from all nodes")
  ap.add_argument("--skip_torch", action="store_true")
  ap.add_argument("--breakdown", action="store_true", help="also time the step's parts (towers, optimizer) alone")
  ap.add_argument("--conv_impl", default="", help="model.conv_impl for the zsl_jax side (default: the config's)")
  ap.add_argument("--dry-run", dest="dry_run", action="store_true",
                  help="tiny CLIP, 1 timed step (or toy AOT shapes with --aot): a smoke test")
  ap.add_argument("--aot", action="store_true", help="paper-scale compile-only analysis (see hgr_aot.py)")
  ap.add_argument("--remat_text", default="", help="--aot: text remat policy to compile (default: the config's)")
  ap.add_argument("--replay_steps", type=int, default=500, help="--aot: sampler steps replayed")
  ap.add_argument("--mfu", type=float, default=0.4, help="--aot: assumed MFU for the H100 projection")
  return ap.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.aot:
    limit_threads(max(args.threads, 1), "--xla_force_host_platform_device_count=8")
    import hgr_aot  # pylint: disable=import-outside-toplevel  (jax must see XLA_FLAGS first)
    return hgr_aot.run(args)
  limit_threads(args.threads)
  import hgr_timing  # pylint: disable=import-outside-toplevel  (jax/torch must see the thread settings)
  return hgr_timing.run(args)


if __name__ == "__main__":
  sys.exit(main())
