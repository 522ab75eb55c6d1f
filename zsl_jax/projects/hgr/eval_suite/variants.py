"""Training-free zero-shot inference variants over the hierarchy, for any CLIP the trainer offers.

Each variant turns normalised image features x [b, E] into scores over all N hierarchy nodes, so the
same counts and the same metrics follow for every variant (`metrics.count_batch`); the evaluator
encodes each image once and scores it under every variant it was asked for.

  plain           the trainer's one prompt per node ("a photo of a {}.", the reference's template):
                  s(x, c) = <x, t_c>.
  ensemble        CLIP's 80 ImageNet templates (Radford et al., 2021): t_c is the L2-normalised mean
                  of the normalised template encodings, as open_clip's `build_zero_shot_classifier`;
                  encoded once per weights and cached on disk under a fingerprint of them.
  chils           CHiLS (Novack et al., ICML 2023): a class is scored through its subclass set S(c), here
                  its WordNet children in the hierarchy plus the class itself (CHiLS adds the class to
                  its generated sets; a childless class keeps only itself): s(x, c) = max_{k in S(c)} <x, t_k>,
                  mapped back to c. `chils_reweight` (CHiLS's default "normal" reweighting) multiplies each
                  subclass probability by its class's, p(k|x) p(c|x); in log space that is
                  tau (<x, t_k> + <x, t_c>) minus per-image constants, so s(x, c) = max_k <x, t_k> + <x, t_c>
                  ranks exactly as the reweighted probabilities for every metric here (all rank within
                  one image), at any temperature.
  hierarchy_clip  Hierarchy-CLIP (Ge et al., CVPR 2023): images whose zero-shot confidence, the top softmax
                  probability over the test classes at temperature `hclip_temperature` (CLIP's logit
                  scale, 100), is below `hclip_threshold` are rescored with label augmentation: top-down,
                  the class name is joined with its parent's ("{class}, which is a kind of {parent}");
                  bottom-up, the class takes the best of that prompt and its children's prompts. Confident
                  images keep the plain scores. The paper estimates confidence by self-consistency over
                  prompts and image transforms; this uses the max-softmax confidence with a threshold.

Parents are the hierarchy's fixed path parents (one per node), children its DAG children.
"""
import dataclasses
import pathlib

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from zsl_jax.errors import UserError
from zsl_jax.evaluators import base
from zsl_jax.models.clip import zero_shot
from zsl_jax.projects.hgr.eval_suite import consistency
from zsl_jax.text import templates as templates_lib
from zsl_jax.text import tokenizer

AUGMENT = "{}, which is a kind of {}"  # Hierarchy-CLIP's top-down label: class, then parent
DEFAULT_CACHE = "~/.cache/zsl_jax/text_features"


@dataclasses.dataclass(frozen=True)
class Options:
  """The variants' settings (the evaluator's fields of the same names)."""
  template: str = templates_lib.HGR_TEMPLATE  # prompt of Hierarchy-CLIP's augmented labels
  chils_reweight: bool = True
  hclip_threshold: float = 0.5
  hclip_temperature: float = 100.0
  cache_dir: str = ""                           # ensemble cache; "" = DEFAULT_CACHE


def all_processes(flag):
  """True when `flag` is true on every process (a collective decision, e.g. a cache hit on every host)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.asarray(multihost_utils.process_allgather(np.asarray(bool(flag)))).all())


class Prompts:
  """The text features of one set of weights, memoised: variants that share a prompt set encode it once.

  Args:
    encode: tokens [P, 77] -> [P, E] normalised features (the trainer's text tower, jitted).
    hierarchy: the class hierarchy (names, parents, children).
    plain_tokens: [N, 77] the trainer's prompt of every node.
    fingerprint: () -> a string naming the weights (only the ensemble's cache asks for it).
  """

  def __init__(self, encode, hierarchy, plain_tokens, options, fingerprint):
    self.encode, self.hierarchy, self.plain_tokens = encode, hierarchy, plain_tokens
    self.options, self.fingerprint = options, fingerprint
    self._plain = None

  def plain(self):
    if self._plain is None:
      self._plain = self.encode(self.plain_tokens)
    return self._plain

  def strings(self, prompts):
    """[P, E] features of `prompts`, encoded sorted by length (short prompts truncate to short batches)."""
    tokens = tokenizer.tokenize(list(prompts))
    order = np.argsort(np.argmax(tokens, axis=1), kind="stable")
    return jnp.asarray(self.encode(tokens[order]))[np.argsort(order)]

  def ensemble(self, templates):
    """[N, E] host array: the template ensemble of every node, from the cache when every host has it."""
    names = list(self.hierarchy.names)
    cache_dir = str(pathlib.Path(self.options.cache_dir or DEFAULT_CACHE).expanduser())
    path = zero_shot.cache_path(cache_dir, self.fingerprint(), names, templates)
    if all_processes(pathlib.Path(path).is_file()):
      return np.load(path)
    emb = zero_shot.class_embeddings(lambda prompts: base.to_host(self.strings(prompts)), names, templates)
    zero_shot.save_atomic(path, emb)  # identical on every host; atomic, so shared folders are safe too
    return emb


def member_rows(children, self_offset, child_offset):
  """(owner [P], row [P]) int32: node c owns row self_offset + c and rows child_offset + k of its children k."""
  owner = [c for c, kids in enumerate(children) for _ in range(1 + len(kids))]
  row = [r for c, kids in enumerate(children) for r in [self_offset + c] + [child_offset + k for k in kids]]
  return np.asarray(owner, np.int32), np.asarray(row, np.int32)


def set_max(sims, owner, row, num_nodes):
  """[b, N]: per node, the best of `sims[:, row]` [b, P] over the rows it owns."""
  return jax.ops.segment_max(sims[:, row].T, owner, num_segments=num_nodes).T


def augmented_prompts(hierarchy, template):
  """Hierarchy-CLIP's top-down prompt of every node: its name joined with its path parent's (depth 0: alone)."""
  parent = consistency.tree_parents(hierarchy.path_array())
  names = hierarchy.names
  return [template.format(AUGMENT.format(n, names[p]) if p >= 0 else n) for n, p in zip(names, parent)]


class Plain:
  """s(x, c) = <x, t_c> with the trainer's prompt."""

  def __init__(self, hierarchy, options):
    self.hierarchy, self.options, self.num_nodes = hierarchy, options, len(hierarchy)

  def tables(self):
    """Host arrays the scores need, placed on the devices once."""
    return {}

  def text(self, prompts):
    """Device or host text features of one set of weights."""
    return {"nodes": prompts.plain()}

  def scores(self, img, text, tables, candidates):
    """[b, N] scores of normalised image features `img` [b, E] (traced under jit)."""
    del tables, candidates
    return img @ text["nodes"].T


class Ensemble(Plain):
  """Plain scores against the 80-template class vectors."""

  def text(self, prompts):
    return {"nodes": prompts.ensemble(templates_lib.OPENAI_IMAGENET_TEMPLATES)}


class Chils(Plain):
  """max over the class and its children (+ the class's own score when reweighting)."""

  def tables(self):
    owner, row = member_rows(self.hierarchy.children, 0, 0)
    return {"owner": owner, "row": row}

  def scores(self, img, text, tables, candidates):
    sims = img @ text["nodes"].T                                                  # [b, N]
    best = set_max(sims, tables["owner"], tables["row"], self.num_nodes)
    return best + sims if self.options.chils_reweight else best


class HierarchyClip(Plain):
  """Plain scores, or for low-confidence images the best of the parent-augmented prompt and the children."""

  def tables(self):
    owner, row = member_rows(self.hierarchy.children, 0, self.num_nodes)  # rows of [augmented; plain]
    return {"owner": owner, "row": row}

  def text(self, prompts):
    return {"nodes": prompts.plain(),
            "augmented": prompts.strings(augmented_prompts(self.hierarchy, self.options.template))}

  def scores(self, img, text, tables, candidates):
    plain = img @ text["nodes"].T                                                 # [b, N]
    sims = jnp.concatenate([img @ text["augmented"].T, plain], axis=1)           # [b, 2N]
    augmented = set_max(sims, tables["owner"], tables["row"], self.num_nodes)
    confidence = jax.nn.softmax(self.options.hclip_temperature * plain[:, candidates], axis=-1).max(-1)
    return jnp.where((confidence < self.options.hclip_threshold)[:, None], augmented, plain)


VARIANTS = {"plain": Plain, "ensemble": Ensemble, "chils": Chils, "hierarchy_clip": HierarchyClip}


def parse(variant):
  """"plain", "plain,chils" or a sequence of names -> a tuple of distinct known names, in order."""
  names = [v.strip() for v in (variant.split(",") if isinstance(variant, str) else variant)]
  names = list(dict.fromkeys(n for n in names if n))
  unknown = [n for n in names if n not in VARIANTS]
  if unknown or not names:
    raise UserError(f"evaluator variant {variant!r} names {unknown or 'nothing'}; use one or more of "
                    f"{', '.join(VARIANTS)} (comma-separated)")
  return tuple(names)


def build(variant, hierarchy, options):
  """{name: variant object} for `parse(variant)`."""
  if "{}" not in options.template:
    raise UserError(f"evaluator template={options.template!r} needs a '{{}}' where the class name goes")
  if not 0.0 <= options.hclip_threshold <= 1.0:
    raise UserError(f"evaluator hclip_threshold={options.hclip_threshold} is a probability; set it in [0, 1]")
  return {name: VARIANTS[name](hierarchy, options) for name in parse(variant)}
