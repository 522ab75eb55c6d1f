"""Zero-shot evaluation over the ImageNet-21K hierarchy: Hit@k, TOR, POR (and path ratio).

Every class prompt is encoded once per run; each test image is scored exactly once (padded, masked
batches, also across hosts) by one function jitted when the evaluator is built: it encodes the
images, scores them against every prompt and reduces the scores to integer counts on device
(`metrics.count_batch`). Only the summed counts reach the host, so host memory does not grow
with the number of test images and the numbers are identical for any host/device layout. A
per-level accuracy plot and JSON go to `<workdir>/plots/`.

Uses from the trainer's offer: `hierarchy`, `index` (class lists), `prompt_tokens` [N, 77],
`encode_prompts(variables, tokens)`, `encode_images(variables, images)` (jitted, normalised
features) and `eval_dataset(split, classes, global_batch_size, emulate_reference_loader)` ->
(padded batches {image, label, _mask, _skipped}, number of images).
"""
import json
import logging

import jax
import jax.numpy as jnp

from zsl_jax import sharding
from zsl_jax.errors import UserError
from zsl_jax.evaluators import base
from zsl_jax.models import clip as clip_lib
from zsl_jax.projects.hgr import metrics as hm
from zsl_jax.projects.hgr.data import imagenet21k

logger = logging.getLogger(__name__)


class Evaluator(base.Evaluator):
  """Args (from `config.evals.<name>`):

    split: instance split of the test images (index splits: test, val, ls_test, ...).
    classes: class split whose images are scored and ranked for Hit@k (rest, p_rest, hop2, ...).
    all_classes: class split over which TOR / POR pick their predictions (the reference's `all`).
    batch_size: global images per evaluation batch.
    prompt_batch: prompts encoded per text-tower call.
    emulate_reference_loader: score the reference loader's duplicated subset instead
      (`data.imagenet21k.reference_loader_rows`).
    tag: name used for the plot files.
    num_threads: image decoding threads.
  """

  def __init__(self, context, split="test", classes="rest", all_classes="all", batch_size=64, prompt_batch=256,
               emulate_reference_loader=False, tag="zsl", num_threads=8):
    super().__init__(context)
    hierarchy, index = self.offer["hierarchy"], self.offer["index"]
    self.split, self.classes, self.batch_size, self.prompt_batch = split, classes, batch_size, prompt_batch
    self.emulate, self.tag, self.num_threads = emulate_reference_loader, tag, num_threads
    candidates = hierarchy.indices(index.class_list(classes))                       # [Nc]
    if not len(candidates):
      raise UserError(f"class split {classes!r} is empty; nothing to evaluate")
    self.tables = hm.Tables.build(hierarchy.path_array(), candidates,
                                  hierarchy.indices(index.class_list(all_classes)))
    arrays = self.tables.arrays()
    self._tables = sharding.global_batch(arrays, self.mesh, replicated_keys=tuple(arrays))  # on device, once
    self._count = self._count_fn()

  def _count_fn(self):
    """jitted (variables, prompt features [N, E], tables, global batch) -> summed integer counts (replicated)."""
    encode_images, k = self.offer["encode_images"], self.tables.k

    def count(variables, text, tables, batch):
      scores = encode_images(variables, batch["image"]) @ text.T                   # [b, N]
      counts = hm.count_batch(scores, batch["label"], batch["_mask"], tables, k)
      return {**counts, "skipped": batch["_skipped"].astype(jnp.int32).sum()}

    return jax.jit(count, out_shardings=sharding.replicated(self.mesh))

  def _prompt_features(self, variables):
    """[N, E] normalised features of every node's prompt, encoded in truncated chunks."""
    encode = self.offer["encode_prompts"]
    return clip_lib.encode_prompts_in_chunks(lambda t: encode(variables, t), self.offer["prompt_tokens"],
                                             self.prompt_batch)

  def run(self, state, step):
    del step  # The numbers depend on the weights only.
    variables = base.model_variables(state)
    text = self._prompt_features(variables)
    batches, total = self.offer["eval_dataset"](self.split, self.classes, self.batch_size,
                                                emulate_reference_loader=self.emulate)
    batches = imagenet21k.eval_iterator(batches, num_threads=self.num_threads,
                                        prefetch_buffer_size=self.num_threads)
    count = lambda g: (self._count(variables, text, self._tables, g), None)
    counts, _ = base.evaluate_batches(batches, self.mesh, count)
    if counts is None or int(counts["count"]) == 0:
      raise UserError(f"no decodable test images in split {self.split!r} / classes {self.classes!r}")
    results = hm.from_counts(counts)
    skipped = int(counts["skipped"])
    results.update(skipped=skipped, num_classes=int(len(self.tables.candidates)))
    if not self.emulate and results["count"] + skipped != total:
      raise RuntimeError(f"evaluated {results['count']} + {skipped} skipped images of {total}")
    if jax.process_index() == 0:
      self._plot_levels(*hm.per_level(counts), results["count"])
    return results

  def _plot_levels(self, per_level, counts, images):
    """Per-depth accuracy of the level predictions (POR's ingredients), as JSON and PNG."""
    out = self.workdir / "plots"
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
    ax.set_title(f"Per-level accuracy ({self.tag}, {images} images)")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(out / f"levels_{self.tag}.png", dpi=100)
    plt.close(fig)
