"""The hierarchical evaluator's inference variants on the HGR demo (tiny CLIP, random weights), each against
a direct computation from the trainer's own towers: prompt-ensemble class vectors, CHiLS and
Hierarchy-CLIP scores, and the metrics of all variants scored in one pass over the test images.

Class names come from the demo hierarchy, whatever the demo generator calls its classes.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zsl_jax import contracts
from zsl_jax import sharding
from zsl_jax.errors import UserError
from zsl_jax.models import clip as clip_lib
from zsl_jax.projects.hgr import config as hgr_config
from zsl_jax.projects.hgr import evaluator as hgr_evaluator
from zsl_jax.projects.hgr import trainer as hgr_trainer
from zsl_jax.text import templates
from zsl_jax.text import tokenize

EVAL_NAME = next(iter(hgr_config.EVAL_SETS))
CLASSES = hgr_config.EVAL_SETS[EVAL_NAME]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """(trainer, evaluation state with random weights, context factory)."""
  config = hgr_config.hgr_config("demo")
  config.data.demo_root = str(tmp_path_factory.mktemp("hgr_demo_data"))
  mesh = sharding.make_mesh(dict(data=1, fsdp=1), jax.devices()[:1])  # 8 devices: test_compare_zero_shot
  trainer = hgr_trainer.Trainer(config, mesh)
  variables = jax.jit(trainer.init_variables)(jax.random.PRNGKey(0))
  state = {"params": variables["params"], "model_state": {"batch_stats": variables["batch_stats"]}}
  workdir = tmp_path_factory.mktemp("variants")

  def evaluator(**fields):
    context = contracts.EvalContext(name=EVAL_NAME, mesh=mesh, workdir=workdir, offer=trainer.eval_offer())
    fields = {"classes": CLASSES, "prompt_batch": 512, "num_threads": 2, "cache_dir": str(workdir / "cache"), **fields}
    return hgr_evaluator.Evaluator(context, **fields)

  return trainer, state, evaluator


@functools.lru_cache(maxsize=None)
def _text_tower(trainer):
  return jax.jit(lambda v, t: trainer.module.apply(trainer.clip_variables(v), t, method=clip_lib.CLIP.encode_text))


def _encode(trainer, state, prompts):
  """Normalised text features of `prompts` from the CLIP module itself: full 77-token rows, one call."""
  out = np.asarray(_text_tower(trainer)({"params": state["params"], **state["model_state"]}, tokenize(prompts)))
  return out / np.linalg.norm(out, axis=1, keepdims=True)


def _images(trainer, state):
  """(normalised image features [n, E], labels [n]) of every test image, straight from the offer."""
  batches, _ = trainer.eval_offer()["eval_dataset"]("test", CLASSES, 64)
  feats, labels = [], []
  for b in batches:
    keep = b["_mask"].astype(bool)
    feats.append(np.asarray(trainer.encode_images_fn({"params": state["params"], **state["model_state"]},
                                                     jnp.asarray(b["image"])))[keep])
    labels.append(b["label"][keep])
  return np.concatenate(feats), np.concatenate(labels)


def test_ensemble_vectors_are_normalised_means_of_template_encodings(demo, tmp_path):
  trainer, state, evaluator = demo
  names = trainer.hierarchy.names
  ev = evaluator(variant="ensemble", cache_dir=str(tmp_path))
  got = np.asarray(ev._text_features(state)["ensemble"]["nodes"])               # [N, E]
  per_template = np.stack([_encode(trainer, state, [t.format(n) for n in names])
                           for t in templates.OPENAI_IMAGENET_TEMPLATES])        # [80, N, E]
  mean = per_template.mean(0)
  np.testing.assert_allclose(got, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=2e-6)
  (cached,) = tmp_path.glob("zeroshot_*.npy")
  np.save(cached, np.full_like(got, 7.0))                                        # a hit returns the file
  np.testing.assert_array_equal(np.asarray(ev._text_features(state)["ensemble"]["nodes"]), 7.0)
  other = jax.tree.map(lambda x: x * 1.01, state)                                 # other weights: a new entry
  ev._text_features(other)
  assert len(list(tmp_path.glob("zeroshot_*.npy"))) == 2


@pytest.mark.parametrize("reweight", [True, False])
def test_chils_scores_are_the_best_subclass_score_mapped_to_the_class(demo, reweight):
  trainer, state, evaluator = demo
  h = trainer.hierarchy
  ev = evaluator(variant="chils", chils_reweight=reweight)
  text = ev._text_features(state)["chils"]
  plain = _encode(trainer, state, [templates.HGR_TEMPLATE.format(n) for n in h.names])      # [N, E]
  np.testing.assert_allclose(np.asarray(text["nodes"]), plain, atol=2e-6)
  img, _ = _images(trainer, state)
  sims = img @ plain.T                                                           # [n, N]
  want = np.stack([sims[:, [c] + list(h.children[c])].max(1) for c in range(len(h))], axis=1)
  if reweight:
    want = want + sims
  variant = ev.variants["chils"]
  got = jax.jit(variant.scores)(jnp.asarray(img), text, ev._tables["chils"], ev._tables["metrics"]["candidates"])
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
  assert any(h.children)  # internal classes do take their children's scores


def test_hierarchy_clip_rescores_low_confidence_images_only(demo):
  trainer, state, evaluator = demo
  h = trainer.hierarchy
  img, _ = _images(trainer, state)
  plain = _encode(trainer, state, [templates.HGR_TEMPLATE.format(n) for n in h.names])
  candidates = h.indices(trainer.index.class_list(CLASSES))
  logits = 100.0 * img @ plain[candidates].T
  confidence = np.exp(logits - logits.max(1, keepdims=True))
  confidence = (confidence / confidence.sum(1, keepdims=True)).max(1)
  threshold = float(np.median(confidence))                                       # half the images each way
  ev = evaluator(variant="hierarchy_clip", hclip_threshold=threshold)
  parent_names = [h.names[p[-1]] if p else None for p in h.ancestor_path]
  augmented = _encode(trainer, state, [templates.HGR_TEMPLATE.format(f"{n}, which is a kind of {p}" if p else n)
                                       for n, p in zip(h.names, parent_names)])
  sims, aug = img @ plain.T, img @ augmented.T
  bottom_up = np.stack([np.max([aug[:, c]] + [sims[:, k] for k in h.children[c]], axis=0) for c in range(len(h))], 1)
  low = confidence < threshold
  assert 0 < low.sum() < len(low)
  text = ev._text_features(state)["hierarchy_clip"]
  got = jax.jit(ev.variants["hierarchy_clip"].scores)(jnp.asarray(img), text, ev._tables["hierarchy_clip"],
                                                      ev._tables["metrics"]["candidates"])
  np.testing.assert_allclose(np.asarray(got), np.where(low[:, None], bottom_up, sims), atol=2e-5)


def test_all_variants_in_one_pass_give_one_metric_set(demo):
  trainer, state, evaluator = demo
  h = trainer.hierarchy
  ev = evaluator(variant="plain,ensemble,chils,hierarchy_clip")
  results = ev.evaluate(state)
  n = len(trainer.index.rows("test", CLASSES))
  assert list(results) == ["plain", "ensemble", "chils", "hierarchy_clip"]
  for r in results.values():
    assert r.keys() == results["plain"].keys() and r["count"] == n and r["skipped"] == 0
    assert {"hit@1", "tor", "por", "hca", "mta", "mistake_depth", "depth_acc"} <= r.keys()
  # The plain variant scored beside the others equals the evaluator's default (plain only) run.
  np.testing.assert_equal(evaluator().run(state, 0), results["plain"])  # NaN (no mistakes) equals NaN
  flat = ev.run(state, 0)
  assert flat["chils/hit@1"] == results["chils"]["hit@1"] and "plain/mta" in flat
  # CHiLS Hit@1 and TOR, recomputed in numpy from the offer's image features.
  img, labels = _images(trainer, state)
  sims = img @ _encode(trainer, state, [templates.HGR_TEMPLATE.format(x) for x in h.names]).T
  chils = np.stack([sims[:, [c] + list(h.children[c])].max(1) for c in range(len(h))], axis=1) + sims
  candidates = h.indices(trainer.index.class_list(CLASSES))
  hit1 = np.mean(candidates[np.argmax(chils[:, candidates], 1)] == labels)
  tor = np.mean((h.path_array()[labels] == np.argmax(chils, 1)[:, None]).any(1))
  assert results["chils"]["hit@1"] == pytest.approx(hit1, abs=1e-12)
  assert results["chils"]["tor"] == pytest.approx(tor, abs=1e-12)


def test_a_misspelled_variant_is_one_clear_error(demo):
  _, _, evaluator = demo
  with pytest.raises(UserError, match="'chills'.*plain, ensemble, chils, hierarchy_clip"):
    evaluator(variant="plain,chills")
  with pytest.raises(UserError, match="hclip_threshold"):
    evaluator(variant="hierarchy_clip", hclip_threshold=1.5)
