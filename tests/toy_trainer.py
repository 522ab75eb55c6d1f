"""Test-only trainer: a BatchNorm MLP on a seeded Gaussian-mixture classification task.

It proves the engine (sharding, resume, NaN guard, evaluators) with a model that compiles in
seconds; it is a fixture, not a user-facing method. Every example carries its `index`, and the
per-step sum of indices is logged so tests can check the data stream continues exactly.
"""
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from zsl_jax import trainer as base
from zsl_jax.data import pipeline
from zsl_jax.data import sampling
from zsl_jax.evaluators import base as eval_base


class MLP(nn.Module):
  hidden: int
  classes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    # No bias before BatchNorm: its gradient is pure rounding noise, which Adam would amplify.
    x = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
    x = nn.relu(x)
    return nn.Dense(self.classes, dtype=self.dtype)(x).astype(jnp.float32)


class ToySource:
  """Random-access Gaussian mixture: class c has mean 2 * e_c; `index` identifies the example."""

  def __init__(self, num_examples, dim, classes, seed):
    rng = np.random.default_rng(seed)
    self.labels = rng.integers(0, classes, num_examples).astype(np.int32)
    means = 2.0 * np.eye(classes, dim, dtype=np.float32)
    self.x = (means[self.labels] + rng.normal(size=(num_examples, dim))).astype(np.float32)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"x": self.x[i], "label": self.labels[i], "index": np.int32(i)}


class _SlowDown:
  """Lets process-kill tests catch a run between two checkpoints."""

  def __init__(self, seconds):
    self.seconds = seconds

  def __call__(self, batch):
    time.sleep(self.seconds)
    return batch


class Trainer(base.Trainer):

  def __init__(self, config, mesh):
    super().__init__(config, mesh)
    t = config.toy
    self.model = MLP(hidden=t.hidden, classes=t.classes, dtype=self.dtype)

  def init_variables(self, rng):
    return self.model.init(rng, jnp.zeros((1, self.config.toy.dim), jnp.float32))

  def loss(self, variables, batch, rng, step):
    del rng
    logits, updates = self.model.apply(variables, batch["x"], train=True, mutable=["batch_stats"])
    onehot = jax.nn.one_hot(batch["label"], self.config.toy.classes)
    loss = optax.softmax_cross_entropy(logits, onehot).mean()
    loss = jnp.where(step + 1 == self.config.toy.nan_at_step, jnp.nan, loss)
    accuracy = (logits.argmax(-1) == batch["label"]).mean()
    return loss, (updates, {"accuracy": accuracy, "index_sum": batch["index"].sum()})

  def eval_offer(self):
    t = self.config.toy
    return {"predict": jax.jit(lambda v, x: self.model.apply(v, x).argmax(-1)), "dim": t.dim, "classes": t.classes}

  def steps_per_epoch(self):
    return self.config.toy.train_examples // self.config.batch_size

  def train_iterator(self):
    t = self.config.toy
    source = ToySource(t.train_examples, t.dim, t.classes, seed=0)
    sampler = sampling.ShuffledSampler(np.arange(len(source)), self.config.batch_size, self.config.seed)
    load = lambda rows: {"x": source.x[rows], "label": source.labels[rows], "index": rows.astype(np.int32)}
    it_ds = sampling.iter_dataset(sampler, load)
    if t.sleep_per_batch:  # After prefetching, so the delay is paid in the training loop.
      it_ds = it_ds.map(_SlowDown(t.sleep_per_batch))
    return iter(it_ds)


class Evaluator(eval_base.Evaluator):
  """Accuracy on a held-out draw of the mixture, through the core's padded eval loop."""

  def __init__(self, context, num_examples=100, batch_size=16):
    super().__init__(context)
    o = self.offer
    self.source = ToySource(num_examples, o["dim"], o["classes"], seed=1)
    self.batch_size = batch_size
    predict = o["predict"]

    def count(variables, batch):
      mask = batch[pipeline.MASK_KEY]
      hits = (predict(variables, batch["x"]) == batch["label"]) & mask
      return {"correct": hits.sum(), "count": mask.sum()}

    self._count = jax.jit(count)

  def run(self, state, step):
    del step
    variables = eval_base.model_variables(state)
    batches = pipeline.padded_eval_dataset(grain.MapDataset.source(self.source), self.batch_size)
    sums, _ = eval_base.evaluate_batches(batches, self.mesh, lambda g: (self._count(variables, g), None))
    return {"accuracy": int(sums["correct"]) / int(sums["count"]), "count": int(sums["count"])}
