"""Zero-shot evaluation over the ImageNet-21K hierarchy: Hit@k, TOR, POR (and path ratio).

Every class prompt is encoded once; each test image is scored exactly once (padded, masked
batches, also across hosts), on device: its top-20 among the candidate (test) classes, its top-1
among all classes and its best node at every depth. Only those small integer arrays reach the
host, where `hierarchy_metrics` turns them into numbers. A per-level accuracy plot and JSON go
to `<workdir>/plots/`.
"""
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax import sharding
from zsl_jax.projects.hgr.data import imagenet21k
from zsl_jax.data import pipeline
from zsl_jax.errors import UserError
from zsl_jax.evaluators import base
from zsl_jax.projects.hgr import metrics as hm
from zsl_jax.models import clip as clip_lib

logger = logging.getLogger(__name__)


class Evaluator(base.Evaluator):
  """Args (from `config.evals.<name>`):

    split: instance split of the test images (index splits: test, val, ls_test, ...).
    classes: class split whose images are scored and ranked for Hit@k (rest, p_rest, hop2, ...).
    all_classes: class split over which TOR / POR pick their predictions (the reference's `all`).
    batch_size: global images per evaluation batch.
    prompt_batch: prompts encoded per text-tower call.
    emulate_reference_loader: score the reference loader's duplicated subset instead (spec §4.4).
    tag: name used for the plot files.
  """

  def __init__(self, trainer, mesh, workdir, split="test", classes="rest", all_classes="all", batch_size=64,
               prompt_batch=256, emulate_reference_loader=False, tag="zsl", num_threads=8):
    super().__init__(trainer, mesh, workdir)
    self.hierarchy, self.index = trainer.hierarchy, trainer.index
    self.split, self.classes, self.batch_size, self.prompt_batch = split, classes, batch_size, prompt_batch
    self.emulate, self.tag, self.num_threads = emulate_reference_loader, tag, num_threads
    n = len(self.hierarchy)
    self.candidates = self.hierarchy.indices(self.index.class_list(classes))        # [Nc]
    if not len(self.candidates):
      raise UserError(f"class split {classes!r} is empty; nothing to evaluate")
    self.position = np.full(n, -1, np.int32)
    self.position[self.candidates] = np.arange(len(self.candidates))
    all_idx = self.hierarchy.indices(self.index.class_list(all_classes))
    self.in_all = np.zeros(n, bool)
    self.in_all[all_idx] = True
    self.paths = self.hierarchy.path_array()                                        # [N, L]
    depth = np.where(self.in_all, self.hierarchy.depth, -1)
    self.depth_masks = np.stack([depth == d for d in range(self.paths.shape[1])])   # [L, N]
    self.k = min(max(hm.HIT_KS), len(self.candidates))

  def _prompt_features(self, variables):
    """[N, E] normalised features of every node's prompt, encoded in truncated chunks."""
    return clip_lib.encode_prompts_in_chunks(lambda t: self.trainer.encode_prompts_fn(variables, t),
                                             self.trainer.tokens, self.prompt_batch)

  def _predict_fn(self):
    trainer, k = self.trainer, self.k
    candidates, in_all, depth_masks = (jnp.asarray(x) for x in (self.candidates, self.in_all, self.depth_masks))

    def predict(variables, text, images):
      img = trainer.encode_images_fn(variables, images)                            # [b, E]
      scores = img @ text.T                                                         # [b, N]
      _, topk = jax.lax.top_k(scores[:, candidates], k)                             # [b, k] positions
      top1_all = jnp.argmax(jnp.where(in_all, scores, -jnp.inf), axis=-1)           # [b]
      levels = jnp.argmax(jnp.where(depth_masks[None], scores[:, None, :], -jnp.inf), axis=-1)  # [b, L]
      return topk, top1_all, levels

    return jax.jit(predict)

  def run(self, state):
    variables = {"params": state["params"], **state["model_state"]}
    text = self._prompt_features(variables)
    batches, total = imagenet21k.eval_dataset(
        self.index, self.split, self.classes, self.batch_size,
        image_size=self.trainer.clip_config.image_resolution, emulate_reference_loader=self.emulate)
    predict = self._predict_fn()
    keep = {"topk": [], "top1": [], "levels": [], "label": []}
    skipped = 0
    for batch in imagenet21k.eval_iterator(batches, num_threads=self.num_threads,
                                           prefetch_buffer_size=self.num_threads):
      g = sharding.global_batch({"image": batch["image"], "label": batch["label"],
                                 "mask": batch[pipeline.MASK_KEY], "skipped": batch["_skipped"]}, self.mesh)
      topk, top1, levels = predict(variables, text, g["image"])
      host = base.to_host({"topk": topk, "top1": top1, "levels": levels, "label": g["label"],
                           "mask": g["mask"], "skipped": g["skipped"]})
      m = host["mask"]
      skipped += int(host["skipped"].sum())
      for key in keep:
        keep[key].append(host[key][m])
    arrays = {k: np.concatenate(v) for k, v in keep.items()}
    labels = arrays["label"]
    if len(labels) == 0:
      raise UserError(f"no decodable test images in split {self.split!r} / classes {self.classes!r}")
    results = hm.hit_at_k(arrays["topk"], self.position[labels])
    results.update(hm.hierarchical_ratios(arrays["top1"], arrays["levels"], labels, self.paths))
    results.update(count=int(len(labels)), skipped=skipped, num_classes=int(len(self.candidates)))
    if not self.emulate and len(labels) + skipped != total:
      raise RuntimeError(f"evaluated {len(labels)} + {skipped} skipped images of {total}")
    if jax.process_index() == 0:
      self._plot_levels(arrays["levels"], labels)
    return results

  def _plot_levels(self, levels, labels):
    """Per-depth accuracy of the level predictions (POR's ingredients), as JSON and PNG."""
    p = self.paths[labels]
    valid = p >= 0
    right = (levels[:, :p.shape[1]] == p) & valid
    per_level = [float(right[:, d].sum() / valid[:, d].sum()) if valid[:, d].any() else None
                 for d in range(p.shape[1])]
    counts = [int(valid[:, d].sum()) for d in range(p.shape[1])]
    out = pathlib.Path(self.workdir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"levels_{self.tag}.json").write_text(json.dumps({"accuracy": per_level, "images": counts}, indent=1))
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, ax = plt.subplots(figsize=(6, 3.5))
    depths = [d for d, a in enumerate(per_level) if a is not None]
    ax.bar(depths, [per_level[d] for d in depths], color="tab:blue")
    ax.set_xticks(depths)
    ax.set_xlabel("depth in the hierarchy")
    ax.set_ylabel("accuracy of the level prediction")
    ax.set_title(f"Per-level accuracy ({self.tag}, {len(labels)} images)")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(out / f"levels_{self.tag}.png", dpi=100)
    plt.close(fig)
