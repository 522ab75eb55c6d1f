r"""DAZLE train-step time: zsl_jax (JAX) vs a PyTorch implementation of the reference step.

  python benchmarks/dazle_step.py [--steps 20] [--full]

Same machine, same AWA2 shapes (B=50, 49 regions, 2048 features, 85 attributes, 50 classes, the
notebook's RMSprop). Prints both step times, their ratio and the projected wall time of the full
AWA2 schedule (9,410 steps + 21 test evaluations of 13,795 images). `--full` instead runs that whole
schedule in JAX on AWA2-sized features generated on the device (meant for a GPU; on a CPU it takes
as long as projected). The torch step is written here from dazle_vsmr.md §1 (forward, CE over all
classes without the margin, λ·self-calibration, torch.optim.RMSprop), not copied from the authors.
"""
import argparse
import os
import platform
import time

import numpy as np

B, R, F, D, I, K = 50, 49, 2048, 300, 85, 50
SEEN = np.sort(np.random.default_rng(0).choice(K, 40, replace=False))
UNSEEN = np.setdiff1d(np.arange(K), SEEN)
AWA2_STEPS, AWA2_EVALS, AWA2_TEST_IMAGES = 9410, 21, 5882 + 7913


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  feats = np.maximum(rng.standard_normal((B, R, F)), 0).astype(np.float32)  # post-ReLU-like
  labels = rng.choice(SEEN, B).astype(np.int32)
  att = np.abs(rng.standard_normal((K, I))).astype(np.float32)
  w2v = rng.standard_normal((I, D)).astype(np.float32)
  return feats, labels, att, w2v


# ---------------------------------------------------------------------------------------- JAX
def jax_setup():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from zsl_jax import optim  # pylint: disable=import-outside-toplevel
  from zsl_jax.projects.attr import config as configs_zsl  # pylint: disable=import-outside-toplevel
  from zsl_jax.projects.attr.losses import dazle as losses  # pylint: disable=import-outside-toplevel
  from zsl_jax.projects.attr.models import dazle  # pylint: disable=import-outside-toplevel
  feats, labels, att, w2v = _inputs()
  model = dazle.DAZLE(num_attributes=I, feature_dim=F, w2v_dim=D, normalize_V=True)
  a, m = dazle.universe_inputs(att / np.linalg.norm(att, axis=1, keepdims=True), np.arange(K), UNSEEN)
  variables = model.init(jax.random.PRNGKey(0), feats[:1], a, m)
  params = {**variables["params"], "V": jnp.asarray(w2v / np.linalg.norm(w2v, axis=1, keepdims=True))}
  params["W_2"] = 0.01 * jax.random.normal(jax.random.PRNGKey(1), (D, F))  # non-uniform attention
  params["W_3"] = 0.01 * jax.random.normal(jax.random.PRNGKey(2), (D, F))
  consts = variables["constants"]
  tx, _ = optim.make(configs_zsl.rmsprop(momentum=0.0), AWA2_STEPS)
  unseen = jnp.asarray(np.isin(np.arange(K), UNSEEN))

  def step(state, x, y):
    def loss_fn(p):
      out = model.apply({"params": p, "constants": consts}, x)
      return losses.dazle_loss(out, y, unseen)[0]
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

  state = {"params": params, "opt": tx.init(params)}
  step = jax.jit(step, donate_argnums=(0,))
  scores = jax.jit(lambda p, x: model.apply({"params": p, "constants": consts}, x)["scores"])
  return state, step, scores, jnp.asarray(feats), jnp.asarray(labels)


def time_jax(steps):
  state, step, scores, x, y = jax_setup()
  t0 = time.perf_counter()
  state, loss = step(state, x, y)
  loss.block_until_ready()
  compile_s = time.perf_counter() - t0
  for _ in range(2):
    state, loss = step(state, x, y)
  loss.block_until_ready()
  t0 = time.perf_counter()
  for _ in range(steps):
    state, loss = step(state, x, y)
  loss.block_until_ready()
  per_step = (time.perf_counter() - t0) / steps
  s = scores(state["params"], x)
  s.block_until_ready()
  t0 = time.perf_counter()
  for _ in range(steps):
    s = scores(state["params"], x)
  s.block_until_ready()
  per_eval_batch = (time.perf_counter() - t0) / steps
  return per_step, per_eval_batch, compile_s, float(loss)


def run_full_jax():
  """The whole AWA2 schedule on generated features (drawn on the device, never held in host RAM)."""
  import jax  # pylint: disable=import-outside-toplevel
  state, step, scores, _, y = jax_setup()
  gen = jax.jit(lambda k: jax.nn.relu(jax.random.normal(k, (B, R, F))))
  key = jax.random.PRNGKey(0)
  t0 = time.perf_counter()
  loss = None
  eval_every = AWA2_STEPS // (AWA2_EVALS - 1)
  n_eval_batches = -(-AWA2_TEST_IMAGES // B)
  for i in range(AWA2_STEPS + 1):
    if i % eval_every == 0:
      for j in range(n_eval_batches):
        s = scores(state["params"], gen(jax.random.fold_in(key, 10 ** 6 + j)))
      s.block_until_ready()
    if i < AWA2_STEPS:
      state, loss = step(state, gen(jax.random.fold_in(key, i)), y)
  loss.block_until_ready()
  return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------- torch
def time_torch(steps):
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as TF  # pylint: disable=import-outside-toplevel
  feats, labels, att, w2v = _inputs()
  fmap = torch.tensor(feats).permute(0, 2, 1).contiguous()  # [B, F, R] as the reference stores it
  y = torch.tensor(labels, dtype=torch.long)
  V = torch.nn.Parameter(TF.normalize(torch.tensor(w2v)))
  W1 = torch.nn.Parameter(torch.randn(D, F))
  W2 = torch.nn.Parameter(0.01 * torch.randn(D, F))
  W3 = torch.nn.Parameter(0.01 * torch.randn(D, F))
  Z = TF.normalize(torch.tensor(att))
  margin = torch.ones(K)
  margin[torch.tensor(SEEN)] = -1
  unseen = torch.tensor(UNSEEN)
  opt = torch.optim.RMSprop([V, W1, W2, W3], lr=1e-4, weight_decay=1e-4, momentum=0.0, alpha=0.99, eps=1e-8)

  def forward(x):
    Vn = TF.normalize(V)
    x = TF.normalize(x, dim=1)
    S = torch.einsum("iv,vf,bfr->bir", Vn, W1, x)
    A = TF.softmax(torch.einsum("iv,vf,bfr->bir", Vn, W2, x), dim=-1)
    Fp = torch.einsum("bir,bfr->bif", A, x)
    Sp = torch.einsum("bir,bir->bi", A, S)
    Ap = torch.sigmoid(torch.einsum("iv,vf,bif->bi", Vn, W3, Fp))
    return torch.einsum("ki,bi,bi->bk", Z, Ap, Sp) + margin

  def step():
    opt.zero_grad()
    s = forward(fmap)
    ce = TF.cross_entropy(s - margin, y)
    cal = -torch.log(TF.softmax(s, dim=-1)[:, unseen].sum(1).mean())
    loss = ce + 0.1 * cal
    loss.backward()
    opt.step()
    return loss

  for _ in range(2):
    step()
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step()
  per_step = (time.perf_counter() - t0) / steps
  with torch.no_grad():
    t0 = time.perf_counter()
    for _ in range(steps):
      forward(fmap)
    per_eval_batch = (time.perf_counter() - t0) / steps
  return per_step, per_eval_batch, loss.item(), torch.get_num_threads()


def projected(per_step, per_eval_batch):
  return AWA2_STEPS * per_step + AWA2_EVALS * (-(-AWA2_TEST_IMAGES // B)) * per_eval_batch


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=20, help="timed steps per framework (after warm-up)")
  p.add_argument("--full", action="store_true", help="run the full AWA2 schedule in JAX on generated features")
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference step")
  args = p.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; JAX backend "
        f"{jax.default_backend()} ({dev.device_kind}), {jax.device_count()} device(s)")
  if jax.default_backend() == "cpu":
    print("no GPU/TPU here: these are CPU numbers (no accelerator was lent for this measurement)")
  print(f"shapes: B={B}, regions={R}, features={F}, attributes={I}, classes={K}; RMSprop lr 1e-4, wd 1e-4")
  j_step, j_eval, j_compile, j_loss = time_jax(args.steps)
  print(f"JAX   train step {j_step * 1e3:8.2f} ms  eval batch {j_eval * 1e3:8.2f} ms  (compile {j_compile:.1f} s, "
        f"loss {j_loss:.4f})")
  j_total = projected(j_step, j_eval)
  print(f"JAX   projected full AWA2 schedule ({AWA2_STEPS} steps + {AWA2_EVALS} evaluations of {AWA2_TEST_IMAGES} "
        f"images): {j_total / 60:.1f} min")
  if not args.no_torch:
    t_step, t_eval, t_loss, threads = time_torch(args.steps)
    print(f"torch train step {t_step * 1e3:8.2f} ms  eval batch {t_eval * 1e3:8.2f} ms  ({threads} threads, "
          f"loss {t_loss:.4f})")
    print(f"torch projected full AWA2 schedule: {projected(t_step, t_eval) / 60:.1f} min")
    print(f"ratio torch/JAX: train step {t_step / j_step:.2f}x, eval batch {t_eval / j_eval:.2f}x")
  if args.full:
    wall = run_full_jax()
    print(f"JAX   measured full AWA2 schedule on generated AWA2-sized features: {wall / 60:.1f} min")


if __name__ == "__main__":
  main()
