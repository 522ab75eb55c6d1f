"""Flat CLIP fine-tuning baseline: cross-entropy over the seen classes' prompts, no hierarchy.

The HGR-Net paper's "CLIP" rows: the same backbone, data and evaluator as HGR-Net, trained with
plain image-to-prompt cross-entropy over the 983 (1K) seen classes on shuffled batches (the
reference's `baseline/CLIP/clip_train.py`: AdamW 3e-7, weight decay 1e-4, batch 64). Evaluating
an unmodified converted OpenAI checkpoint with this config's evaluator gives the zero-shot row.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from zsl_jax.data import pipeline
from zsl_jax.data import sampling
from zsl_jax.projects.hgr import trainer as hgr
from zsl_jax.projects.hgr.data import batchers
from zsl_jax.projects.hgr.data import imagenet21k
from zsl_jax.text import tokenizer


class Trainer(hgr.Trainer):
  """config.trainer = "clip_baseline" (reuses HGR-Net's data, model and evaluator plumbing)."""

  replicated_batch_keys = ()

  def __init__(self, config, mesh):
    super().__init__(config, mesh)
    seen = self.hierarchy.indices(self.index.class_list(config.data.train_classes))
    self.seen = seen
    self.position = np.full(len(self.hierarchy), -1, np.int32)
    self.position[seen] = np.arange(len(seen))
    self.seen_tokens = jnp.asarray(tokenizer.truncate_tokens(self.tokens[seen]))  # [S, L]

  def loss(self, variables, batch, rng, step):
    del rng, step
    img, txt, updates = self.encode(variables, batch["image"], self.seen_tokens, train=True)
    logit_scale = variables["params"]["clip"]["logit_scale"]
    logits = jnp.exp(logit_scale) * img @ txt.T                       # [B, S]
    target = jnp.asarray(self.position)[batch["label"]]
    ce = optax.softmax_cross_entropy(logits, jax.nn.one_hot(target, txt.shape[0]))
    mask = batch[pipeline.MASK_KEY].astype(ce.dtype)
    loss = (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)
    accuracy = ((logits.argmax(-1) == target) * mask).sum() / jnp.maximum(mask.sum(), 1.0)
    return loss, (updates, {"accuracy": accuracy, "logit_scale": jnp.exp(logit_scale)})

  def steps_per_epoch(self):
    return batchers.steps_per_epoch(self.index.labels(self._train_rows()), self.config.batch_size, "shuffled")

  def train_iterator(self):
    """Shuffled global batches: every host loads its slice, the same batches for any host count."""
    d = self.config.data
    rows = sampling.ShuffledSampler(self._train_rows(), self.config.batch_size, self.config.seed)
    load = imagenet21k.LoadImage(self.index, self.clip_config.image_resolution, "clip")
    return sampling.iterator(rows, load, per_row=True, num_threads=d.num_threads, prefetch=d.prefetch,
                             num_workers=d.num_workers)
