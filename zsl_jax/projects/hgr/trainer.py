"""HGR-Net trainer: CLIP fine-tuned with the hierarchical OM loss on class-pure batches.

Per step the host draws one class's images (`data.batchers`, class-pure; or P class-pure slots with
`hgr.classes_per_step`), samples every contrast's negatives (`negatives.ContrastSampler`, seeded by
(seed, step) so a resumed run draws the same ones), deduplicates the prompts and packs them end to
end into the static chunks of `negatives.prompt_layout` (`models.clip.packing`). The device encodes
the images once and the unique prompts once, each device its share of the chunks in use, then scores all contrasts
as one [G, B, C] tensor. The adaptive level weights θ are parameters (`hgr/level_theta`) with
their own optimizer group.
"""
import dataclasses
import functools
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax import checkpoint as ckpt_lib
from zsl_jax import config_lib
from zsl_jax import sharding
from zsl_jax import trainer as base
from zsl_jax.data import demo_cache
from zsl_jax.data import pipeline
from zsl_jax.data import sampling
from zsl_jax.errors import UserError
from zsl_jax.models import clip as clip_lib
from zsl_jax.models.clip import modified_resnet
from zsl_jax.models.clip import packing
from zsl_jax.models.clip import text_transformer
from zsl_jax.projects.hgr import demo_compare
from zsl_jax.projects.hgr import loss as hgr_loss
from zsl_jax.projects.hgr import negatives
from zsl_jax.projects.hgr.data import array_record
from zsl_jax.projects.hgr.data import batchers
from zsl_jax.projects.hgr.data import demo as synthetic_imagenet
from zsl_jax.projects.hgr.data import imagenet21k
from zsl_jax.projects.hgr.hierarchy import graph as graph_lib
from zsl_jax.text import tokenizer

logger = logging.getLogger(__name__)

MODEL_NAMES = ("custom",) + tuple(clip_lib.PRESETS)  # model.name: a CLIP preset, or custom sizes
CONTRAST_KEYS = ("columns", "k_index", "m_index", "group_mask", "outer_depths", "inner_depths")
PROMPT_KEYS = ("prompt_tokens", "prompt_pool", "prompt_chunks", "num_prompts")  # packed prompts (`AddContrasts`)
# CLIP parameters `encode_embedded_packed` reads (setup() declares the last three whatever the method).
TEXT_PARAMS = ("transformer", "ln_final", "text_projection", "positional_embedding", "logit_scale")


def preset_name(name):
  """The CLIP preset `name` spells ("ViT-B-32" -> "ViT-B/32"), or `name` itself when it is none."""
  try:
    return clip_lib.preset_name(clip_lib.get_config(name))
  except UserError:
    return name


def clip_config(model_config):
  """A preset ("RN50", "ViT-B/32", ...) or, for `name="custom"`, the explicit sizes in the config."""
  if model_config.name != "custom":
    return clip_lib.get_config(model_config.name)
  c = model_config.custom
  return clip_lib.CLIPConfig(embed_dim=c.embed_dim, image_resolution=c.image_resolution,
                             vision_layers=tuple(c.vision_layers), vision_width=c.vision_width,
                             vision_patch_size=None, context_length=77,
                             transformer_width=c.transformer_width, transformer_heads=c.transformer_heads,
                             transformer_layers=c.transformer_layers)


def prepare_data(data_config, selections=()):
  """(hierarchy, image index); builds the embedded demo data on first use when `data.demo` is set.

  With `data.images="array_record"` the index reads image bytes from the packs in `data.array_record`,
  checked here to hold every image of `selections` ((split, classes) pairs the run reads).
  """
  hierarchy_file, index_dir = data_config.hierarchy, data_config.index
  if data_config.demo:
    root = pathlib.Path(data_config.demo_root).expanduser()
    paths = demo_cache.main_process_first(lambda: synthetic_imagenet.prepare_demo(root, seed=0), "zsl_jax demo data")
    hierarchy_file = str(pathlib.Path(paths["hierarchy_dir"]) / "hierarchy.json")
    index_dir = paths["index"]
  if not hierarchy_file or not index_dir:
    raise UserError("set --config.data.hierarchy=<hierarchy.json from build_hierarchy> and "
                    "--config.data.index=<folder from make_splits> (or use the :demo config)")
  hierarchy = graph_lib.Hierarchy.load(hierarchy_file)
  index = imagenet21k.ImageIndex(index_dir)
  index.check_hierarchy(hierarchy)
  return hierarchy, array_record.open_images(index, data_config, selections)


def prompt_tokens(hierarchy, template):
  """[N, 77] int32 tokens of "a photo of a {name}." for every node (the reference's one template)."""
  if "{}" not in template:
    raise UserError(f"hgr.template={template!r} needs a '{{}}' where the class name goes")
  return tokenizer.tokenize([template.format(n) for n in hierarchy.names])


def level_counts(hierarchy):
  """N_d: number of classes at each depth (adaptive θ init and inverse-count weights)."""
  return np.asarray([len(n) for n in hierarchy.nodes_at_depth], np.float32)


@dataclasses.dataclass
class AddContrasts:
  """grain map (with the step as index): sample the step's contrasts and pack its unique prompts.

  Every host computes the same contrasts (same seed, same step, same class), so the contrast and
  prompt arrays are replicated batch entries; the images stay sharded. `columns` index the packed
  prompt slots. Without a `layout`, the one of a single device is used.
  """
  sampler: negatives.ContrastSampler
  classes: batchers.ClassPureSampler
  tokens: np.ndarray
  seed: int
  layout: packing.Layout | None = None

  def __post_init__(self):
    self.lengths = negatives.prompt_lengths(self.tokens)
    if self.layout is None:
      self.layout, _ = negatives.prompt_layout(self.sampler, self.classes.classes, self.tokens, 1, seed=self.seed,
                                               classes_per_step=self.classes.classes_per_step)

  def __call__(self, step, batch):
    labels = self.classes.step_labels(step)
    rng = np.random.default_rng([self.seed, 7, int(step)])
    contrasts = self.sampler.sample_step(labels, rng)
    unique, columns, n = negatives.dedupe_prompts(contrasts.node_ids, multiple=1)
    nodes = unique[:n]
    tokens, pool, slot, chunks = packing.pack(self.tokens[nodes], self.lengths[nodes], self.layout)
    out = dict(batch)
    out.update(prompt_tokens=tokens, prompt_pool=pool, prompt_chunks=np.int32(chunks), num_prompts=np.int32(n))
    out["columns"] = np.where(columns >= 0, slot[np.maximum(columns, 0)], -1).astype(np.int32)
    for key in CONTRAST_KEYS[1:]:
      out[key] = getattr(contrasts, key)
    return out


def text_tokens(batch, layout):
  """(prompt tokens, tokens encoded) of a step from `AddContrasts`: a prompt's tokens are contiguous
  from its row's start, so a row holds (its last EOT position + 1) of them."""
  pool = np.asarray(batch["prompt_pool"])
  useful = int((pool.max(axis=1) + 1).sum())
  return useful, int(batch["prompt_chunks"]) * layout.chunk_rows * layout.row_tokens


class Trainer(base.Trainer):
  """config.trainer = "hgr"."""

  replicated_batch_keys = PROMPT_KEYS + CONTRAST_KEYS

  @classmethod
  def check_config(cls, config):
    """HGR-Net's switches (contrasts, level weights, model, image source) and the engine's."""
    super().check_config(config)
    config_lib.check_choices(config, {
        "hgr.method": negatives.METHODS, "hgr.sampler": negatives.SAMPLERS, "hgr.level_weights": hgr_loss.SCHEMES,
        "hgr.index_by": hgr_loss.INDEX_BY, "hgr.weighting": hgr_loss.WEIGHTINGS,
        "hgr.negatives_from": negatives.NEGATIVES_FROM,
        "data.images": array_record.IMAGE_SOURCES, "model.remat_text": text_transformer.REMAT_POLICIES,
        "model.remat_image": text_transformer.REMAT_POLICIES, "model.conv_impl": modified_resnet.CONV_IMPLS})
    config_lib.check_choice(config, "model.name", MODEL_NAMES, normalize=preset_name)
    # The training class count is checked by the sampler, once the index is read.
    batchers.check_classes_per_step(config_lib.lookup(config, "hgr.classes_per_step", 1), config.batch_size)
    chunk_rows = config_lib.lookup(config, "hgr.prompt_chunk_rows", 0)
    if not isinstance(chunk_rows, int) or chunk_rows < 0:
      raise UserError(f"hgr.prompt_chunk_rows={chunk_rows!r}; give a whole number of packed prompt rows per "
                      f"chunk, a multiple of the device count, or 0 to size it automatically")

  @classmethod
  def next_run(cls, config, workdir):
    """The demo's flat CLIP baseline after HGR-Net, then the comparison table (`demo_compare`)."""
    return demo_compare.next_run(config, workdir)

  def __init__(self, config, mesh):
    super().__init__(config, mesh)
    self.hierarchy, self.index = prepare_data(config.data, array_record.needed_selections(config))
    self.clip_config = clip_config(config.model)
    m = config.model
    self.module = clip_lib.CLIP(self.clip_config, self.dtype, bn_use_running_average=not m.bn_train,
                                remat_text=m.get("remat_text", "none"), remat_image=m.get("remat_image", "none"),
                                conv_impl=m.get("conv_impl", "auto"))
    self.tokens = prompt_tokens(self.hierarchy, config.hgr.template)
    self.level_counts = level_counts(self.hierarchy)
    self.paths = self.hierarchy.path_array()
    h = config.hgr
    candidates = self.hierarchy.indices(self.index.class_list(config.data.model_classes))
    self.sampler = negatives.ContrastSampler(
        self.paths, self.hierarchy.depth, self.hierarchy.children, self.hierarchy.nodes_at_depth[0],
        out_ratio=h.out_ratio, in_ratio=h.in_ratio, strategy=h.sampler, k=h.k,
        num_negatives=h.num_negatives, method=h.method, candidates=candidates,
        similarity_fn=self._similarity_fn() if self._ranks_negatives(h) else None,
        negative_nodes=self._negative_nodes(h.get("negatives_from", "all")))
    logger.info("HGR-Net: %d classes, max depth %d, level weights %s (by %s, weighting %s), sampler %s "
                "(k=%d, %d negatives), K=%.2f, M=%.2f, %d contrasts max per step",
                len(self.hierarchy), self.hierarchy.max_depth, h.level_weights, h.index_by, h.weighting,
                h.sampler, h.k, h.num_negatives, h.out_ratio, h.in_ratio, self.sampler.g_max)

  # ------------------------------------------------------------------ variables
  def init_variables(self, rng):
    c = self.clip_config
    images = jnp.zeros((1, c.image_resolution, c.image_resolution, 3), jnp.float32)
    variables = self.module.init(rng, images, jnp.zeros((1, 8), jnp.int32))
    theta = hgr_loss.init_theta(self.level_counts, self.config.hgr.theta_scale)
    return {"params": {"clip": variables["params"], "hgr": {"level_theta": theta}},
            "batch_stats": variables.get("batch_stats", {})}

  def load_init(self, path, abstract_variables):
    """OpenAI / open_clip / HGR-Net torch checkpoints or a converted CLIP folder as initial weights."""
    if pathlib.Path(path).is_dir() and not (pathlib.Path(path) / clip_lib.CONFIG_FILE).exists():
      return None  # Not a converted CLIP folder (e.g. a workdir without checkpoints).
    loaded = clip_lib.load(path)
    if loaded.config != self.clip_config:
      raise UserError(f"{path} holds CLIP {clip_lib.preset_name(loaded.config)} but the config builds "
                      f"{clip_lib.preset_name(self.clip_config)}; set --config.model.name accordingly")
    params = {"clip": loaded.variables["params"],
              "hgr": {"level_theta": hgr_loss.init_theta(self.level_counts, self.config.hgr.theta_scale)}}
    return {"params": params, "batch_stats": loaded.variables.get("batch_stats", {})}

  def clip_variables(self, variables):
    return {"params": variables["params"]["clip"], "batch_stats": variables.get("batch_stats", {})}

  # ------------------------------------------------------------------ loss
  def encode_images(self, variables, images, train=False):
    """Normalised image features [B, E] (and BatchNorm updates when training them)."""
    clip_vars = self.clip_variables(variables)
    if train and self.config.model.bn_train:
      img, updates = self.module.apply(clip_vars, images, train=True, method=clip_lib.CLIP.encode_image,
                                       mutable=["batch_stats"])
    else:
      img, updates = self.module.apply(clip_vars, images, method=clip_lib.CLIP.encode_image), {}
    return img / jnp.linalg.norm(img, axis=-1, keepdims=True), updates

  def encode(self, variables, images, tokens, train=False):
    """Normalised image [B, E] and prompt [U, E] features of plain token rows [U, L] (and BatchNorm updates)."""
    img, updates = self.encode_images(variables, images, train)
    txt = self.module.apply(self.clip_variables(variables), tokens, method=clip_lib.CLIP.encode_text)
    return img, txt / jnp.linalg.norm(txt, axis=-1, keepdims=True), updates

  def _packed_features(self, clip_vars, embedded, tokens, pool):
    """Normalised features [r, S, E] of embedded packed rows; an empty slot gets a finite stand-in (never
    scored), so that no 0 / 0 reaches the gradient."""
    feats = self.module.apply(clip_vars, embedded, tokens, pool, method=clip_lib.CLIP.encode_embedded_packed)
    feats = jnp.where((pool >= 0)[..., None], feats, 1.0)
    return feats / jnp.linalg.norm(feats, axis=-1, keepdims=True)

  def encode_step_prompts(self, variables, batch):
    """Normalised features [slots, E] of the step's packed prompts: every row embedded at once (one
    scatter for the embedding table's gradient), then the chunks in use, each device its rows."""
    clip_vars = self.clip_variables(variables)
    tokens, pool = batch["prompt_tokens"], batch["prompt_pool"]
    embedded = self.module.apply(clip_vars, tokens, method=clip_lib.CLIP.embed_packed)  # [rows, T, W]
    params = clip_vars["params"]
    text = {"params": {k: params[k] for k in TEXT_PARAMS}}  # Only these get a gradient summed chunk by chunk.
    return packing.encode_chunks(self._packed_features, text, embedded, (tokens, pool), batch["prompt_chunks"],
                                 self.layout, self.mesh)

  @functools.cached_property
  def layout(self):
    """The static packed-prompt layout of training steps (`negatives.prompt_layout`), for this mesh."""
    labels = np.unique(self.index.labels(self._train_rows()))
    layout, _ = negatives.prompt_layout(self.sampler, labels, self.tokens, sharding.batch_devices(self.mesh),
                                        self.config.hgr.get("prompt_chunk_rows", 0), seed=self.config.seed,
                                        classes_per_step=self.classes_per_step)
    return layout

  @property
  def classes_per_step(self):
    return self.config.hgr.get("classes_per_step", 1)

  def loss(self, variables, batch, rng, step):
    del rng, step
    h = self.config.hgr
    img, updates = self.encode_images(variables, batch["image"], train=True)
    txt = self.encode_step_prompts(variables, batch)
    contrasts = {k: batch[k] for k in CONTRAST_KEYS}
    theta = variables["params"]["hgr"]["level_theta"]
    weights = hgr_loss.contrast_weights(h.level_weights, contrasts, theta, self.level_counts, h.weighting,
                                        h.index_by)
    logit_scale = variables["params"]["clip"]["logit_scale"]
    loss, _ = hgr_loss.om_loss(img, txt, batch["columns"], weights, logit_scale, batch[pipeline.MASK_KEY],
                               num_slots=self.classes_per_step)
    metrics = {"logit_scale": jnp.exp(logit_scale), "contrasts": batch["group_mask"].sum(),
               "prompts": batch["num_prompts"], "prompt_chunks": batch["prompt_chunks"],
               "images": batch[pipeline.MASK_KEY].sum()}
    return loss, (updates, metrics)

  # ------------------------------------------------------------------ data
  def _train_rows(self):
    d = self.config.data
    rows = self.index.rows(d.train_split, d.train_classes)
    if not len(rows):
      raise UserError(f"split {d.train_split!r} with classes {d.train_classes!r} has no images; "
                      f"check --config.data.index and the class lists")
    return rows

  def steps_per_epoch(self):
    return batchers.steps_per_epoch(self.index.labels(self._train_rows()), self.config.batch_size,
                                    classes_per_step=self.classes_per_step)

  def class_sampler(self):
    """The step -> rows sampler of training (`batchers.ClassPureSampler`)."""
    rows = self._train_rows()
    return batchers.ClassPureSampler(self.index.labels(rows), rows, self.config.batch_size, self.config.seed,
                                     self.classes_per_step)

  def train_iterator(self):
    d = self.config.data
    classes = self.class_sampler()
    load = imagenet21k.LoadImage(self.index, self.clip_config.image_resolution, "clip")
    return sampling.iterator(classes, load, per_row=True,
                             step_map=AddContrasts(self.sampler, classes, self.tokens, self.config.seed, self.layout),
                             num_threads=d.num_threads, prefetch=d.prefetch, num_workers=d.num_workers)

  def _negative_nodes(self, negatives_from):
    """bool [N] of the nodes that may be negatives, or None for every node (the reference).

    "train_tree": the training classes and their ancestors, so that no class outside the tree the
    training images span (an unseen leaf) is named in training: an inductive run in class names.
    """
    if negatives_from == "all":
      return None
    train = self.hierarchy.indices(self.index.class_list(self.config.data.train_classes))
    nodes = np.zeros(len(self.hierarchy), bool)
    ancestors = self.paths[train]
    nodes[ancestors[ancestors >= 0]] = True
    return nodes

  def _ranks_negatives(self, h):
    """near_simi needs similarities when a pool can exceed num_negatives (the sampler refuses a pool
    that does without them), and only then reads `init.checkpoint`'s text tower."""
    return (h.sampler == "near_simi" and bool(self.config.init.checkpoint)
            and negatives.largest_pool(self.hierarchy.depth, h.k) > h.num_negatives)

  def _similarity_fn(self):
    """near_simi ranks negatives by prompt similarity under the *initial* text tower.

    The reference recomputes similarities with the current model at every step; here they come
    once from `config.init.checkpoint` (converted CLIP, torch file, or a zsl_jax run), which keeps
    sampling on the host and deterministic across resumes. A randomly initialised text tower has
    no meaningful similarities, so a from-scratch run (no checkpoint) needs pools that fit num_negatives
    (`negatives.largest_pool`: every node of a pool is then a negative) or another sampler.
    """
    path = self.config.init.checkpoint
    if ckpt_lib.is_zsl_checkpoint(path):
      one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      abstract = jax.eval_shape(self.init_variables, jax.random.PRNGKey(0))
      target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                                       abstract["params"])}
      restored, _ = ckpt_lib.restore_subtree(path, target)
      text_params = restored["params"]["clip"]
    else:
      loaded = clip_lib.load(path)
      text_params = loaded.variables["params"]
    module = clip_lib.CLIP(self.clip_config)
    encode = jax.jit(lambda p, t: module.apply({"params": p}, t, method=clip_lib.CLIP.encode_text))
    emb = np.asarray(clip_lib.encode_prompts_in_chunks(lambda t: encode(text_params, t), self.tokens, 256))
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)  # [N, E]; not in place: a device array's view is read-only
    logger.info("near_simi: prompt similarities from %s", path)
    return lambda node: emb @ emb[node]

  def _normalised_tower(self, method):
    """jitted (variables, inputs) -> L2-normalised features of one CLIP tower (evaluation)."""
    def f(variables, inputs):
      out = self.module.apply(self.clip_variables(variables), inputs, method=method)
      return out / jnp.linalg.norm(out, axis=-1, keepdims=True)
    return jax.jit(f)

  @functools.cached_property
  def encode_prompts_fn(self):
    """(variables, tokens [U, L]) -> normalised prompt features [U, E], replicated; each device encodes
    1/D of the rows (padded to a multiple of D with copies of the first)."""
    def tower(clip_vars, tokens):
      out = self.module.apply(clip_vars, tokens, method=clip_lib.CLIP.encode_text)
      return out / jnp.linalg.norm(out, axis=-1, keepdims=True)

    split = sharding.split_rows(tower, self.mesh)
    encode = jax.jit(lambda variables, tokens: split(self.clip_variables(variables), tokens))
    devices = sharding.batch_devices(self.mesh)

    def encode_prompts(variables, tokens):
      tokens = np.asarray(tokens)
      pad = -len(tokens) % devices
      padded = np.concatenate([tokens, np.repeat(tokens[:1], pad, 0)]) if pad else tokens
      return encode(variables, padded)[:len(tokens)]

    return encode_prompts

  @functools.cached_property
  def encode_images_fn(self):
    """(variables, images [B, S, S, 3]) -> normalised image features [B, E]."""
    return self._normalised_tower(clip_lib.CLIP.encode_image)

  def eval_offer(self):
    """For the hierarchical evaluator: the towers, every node's prompt, the hierarchy and the test images."""
    return {"encode_images": self.encode_images_fn, "encode_prompts": self.encode_prompts_fn,
            "prompt_tokens": self.tokens, "hierarchy": self.hierarchy, "index": self.index,
            "image_size": self.clip_config.image_resolution,
            "eval_dataset": functools.partial(imagenet21k.eval_dataset, self.index,
                                              image_size=self.clip_config.image_resolution)}
