"""Zero-shot evaluation over the ImageNet-21K hierarchy: Hit@k, TOR, POR (and path ratio), HCA, MTA, mistake
severity and per-depth accuracy, for one or several inference variants at once.

The text side of every variant (`eval_suite.variants`: plain prompt, 80-template ensemble, CHiLS,
Hierarchy-CLIP) is encoded once per run; each test image is scored exactly once (padded, masked batches,
also across hosts) by one function jitted when the evaluator is built: it encodes the images, scores
them under every variant and reduces each variant's scores to integer counts on device
(`metrics.count_batch`). Only the summed counts reach the host, so host memory does not grow with the
number of test images and the numbers are identical for any host/device layout. A per-level accuracy
plot and JSON go to `<workdir>/plots/`.

Uses from the trainer's offer: `hierarchy`, `index` (class lists), `prompt_tokens` [N, 77],
`encode_prompts(variables, tokens)`, `encode_images(variables, images)` (jitted, normalised
features) and `eval_dataset(split, classes, global_batch_size, emulate_reference_loader)` ->
(padded batches {image, label, _mask, _skipped}, number of images).
"""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax import sharding
from zsl_jax.errors import UserError
from zsl_jax.evaluators import base
from zsl_jax.models import clip as clip_lib
from zsl_jax.models.clip import zero_shot
from zsl_jax.projects.hgr import config as hgr_config
from zsl_jax.projects.hgr import metrics as hm
from zsl_jax.projects.hgr.data import imagenet21k
from zsl_jax.projects.hgr.eval_suite import plots
from zsl_jax.projects.hgr.eval_suite import variants as variants_lib
from zsl_jax.text import templates

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
    variant: inference variant(s), comma-separated: plain | ensemble | chils | hierarchy_clip
      (`eval_suite.variants`). One variant reports plain metric names; several report `<variant>/<metric>`.
    template, chils_reweight, hclip_threshold, hclip_temperature, cache_dir: the variants' settings
      (`variants.Options`).
    mta_cuts, mta_seed: how many tree cuts MTA averages over, and the seed that draws them.

  `legacy_names`: the names this evaluator's records had before issue 16 (`21k_d` for `in21k_d`), so
  that a run recorded under them counts as evaluated (`zsl_jax.train_loop.missing_final_evals`).
  """

  def __init__(self, context, split="test", classes="rest", all_classes="all", batch_size=64, prompt_batch=256,
               emulate_reference_loader=False, tag="zsl", num_threads=8, variant="plain",
               template=templates.HGR_TEMPLATE, chils_reweight=True, hclip_threshold=0.5, hclip_temperature=100.0,
               cache_dir="", mta_cuts=25, mta_seed=0):
    super().__init__(context)
    hierarchy, index = self.offer["hierarchy"], self.offer["index"]
    self.split, self.classes, self.batch_size, self.prompt_batch = split, classes, batch_size, prompt_batch
    self.emulate, self.tag, self.num_threads = emulate_reference_loader, tag, num_threads
    self.options = variants_lib.Options(template, bool(chils_reweight), float(hclip_threshold),
                                        float(hclip_temperature), cache_dir)
    self.variants = variants_lib.build(variant, hierarchy, self.options)
    if int(mta_cuts) < 0:
      raise UserError(f"evaluator mta_cuts={mta_cuts} must be >= 0 (0 turns MTA off: it reports nan)")
    candidates = hierarchy.indices(index.class_list(classes))                       # [Nc]
    if not len(candidates):
      raise UserError(f"class split {classes!r} is empty; nothing to evaluate")
    self.tables = hm.Tables.build(hierarchy.path_array(), candidates,
                                  hierarchy.indices(index.class_list(all_classes)), cuts=mta_cuts, cut_seed=mta_seed)
    host = {"metrics": self.tables.arrays(), **{name: v.tables() for name, v in self.variants.items()}}
    self._tables = {k: sharding.global_batch(a, self.mesh, replicated_keys=tuple(a)) for k, a in host.items()}
    self._count = self._count_fn()

  @property
  def legacy_names(self):
    return hgr_config.former_names(self.name)

  def _count_fn(self):
    """jitted (variables, {variant: text features}, tables, global batch) -> summed integer counts (replicated)."""
    encode_images, k = self.offer["encode_images"], self.tables.k

    def count(variables, texts, tables, batch):
      img = encode_images(variables, batch["image"])                               # [b, E], once for all variants
      out = {}
      for name, variant in self.variants.items():
        scores = variant.scores(img, texts[name], tables[name], tables["metrics"]["candidates"])  # [b, N]
        out[name] = hm.count_batch(scores, batch["label"], batch["_mask"], tables["metrics"], k)
      return {"variants": out, "skipped": batch["_skipped"].astype(jnp.int32).sum()}

    return jax.jit(count, out_shardings=sharding.replicated(self.mesh))

  def _encode_tokens(self, variables):
    """tokens [P, 77] -> [P, E] normalised prompt features, encoded in truncated chunks of `prompt_batch`."""
    encode = self.offer["encode_prompts"]
    return lambda tokens: clip_lib.encode_prompts_in_chunks(lambda t: encode(variables, t), tokens, self.prompt_batch)

  def _text_features(self, variables):
    """{variant: text features on the devices} for these weights (host arrays replicated onto every device)."""
    prompts = variants_lib.Prompts(self._encode_tokens(variables), self.offer["hierarchy"], self.offer["prompt_tokens"],
                                   self.options, lambda: zero_shot.weights_fingerprint(base.to_host(variables)))
    repl = sharding.replicated(self.mesh)
    put = lambda x: jax.make_array_from_process_local_data(repl, x, x.shape) if isinstance(x, np.ndarray) else x
    return {name: jax.tree.map(put, v.text(prompts)) for name, v in self.variants.items()}

  def run(self, state, step):
    del step  # The numbers depend on the weights only.
    results = self.evaluate(state)
    if len(results) == 1:
      return next(iter(results.values()))
    return {f"{name}/{key}": value for name, r in results.items() for key, value in r.items()}

  def evaluate(self, state):
    """{variant: metrics} of `state`'s weights; also writes the per-level plot and JSON (process 0)."""
    variables = base.model_variables(state)
    texts = self._text_features(variables)
    batches, total = self.offer["eval_dataset"](self.split, self.classes, self.batch_size,
                                                emulate_reference_loader=self.emulate)
    batches = imagenet21k.eval_iterator(batches, num_threads=self.num_threads,
                                        prefetch_buffer_size=self.num_threads)
    count = lambda g: (self._count(variables, texts, self._tables, g), None)
    counts, _ = base.evaluate_batches(batches, self.mesh, count)
    first = next(iter(self.variants))
    if counts is None or int(counts["variants"][first]["count"]) == 0:
      raise UserError(f"no decodable test images in split {self.split!r} / classes {self.classes!r}")
    skipped = int(counts["skipped"])
    results = {}
    for name in self.variants:  # the configured order (device results come back with sorted keys)
      results[name] = {**hm.from_counts(counts["variants"][name]), "skipped": skipped,
                       "num_classes": int(len(self.tables.candidates))}
    evaluated = results[first]["count"]
    if not self.emulate and evaluated + skipped != total:
      raise RuntimeError(f"evaluated {evaluated} + {skipped} skipped images of {total}")
    if jax.process_index() == 0:
      self._plot_levels({name: r["depth_acc"] for name, r in results.items()}, results[first]["depth_images"],
                        evaluated)
    return results

  def _plot_levels(self, accuracy, counts, images):
    """Per-depth accuracy of the level predictions (POR's ingredients), as JSON and PNG."""
    out = self.workdir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    record = {"accuracy": next(iter(accuracy.values())), "images": counts}
    if len(accuracy) > 1:
      record["by_variant"] = accuracy
    (out / f"levels_{self.tag}.json").write_text(json.dumps(record, indent=1))
    plots.per_depth(out / f"levels_{self.tag}.png", accuracy, counts,
                    f"Per-level accuracy ({self.tag}, {images} images)")
