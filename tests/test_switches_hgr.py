"""Every shipped HGR-Net switch run through the engine on the demo data, asserting what it changes (issue 15).

One demo data build and one 2-step base run (module fixtures, BatchNorm statistics trained) serve
every test: the low-shot config (statistics frozen) and `near_simi` start from the base run, eval
mode restores it. Engines run on one device: compiling for 8 simulated ones costs twice the CPU time,
and the sharded paths have their own tests. The loss switches
(`hgr.index_by`, `hgr.weighting`, `hgr.method`) are checked against the paper's formula,
recomputed here in numpy from unpacked prompt features, on the engine pipeline's first batch.
Every setting a test depends on is set explicitly, so the demo recipe can change underneath.
"""
import functools
import importlib
import types

import jax
import numpy as np
import pytest

from tests import cli
from zsl_jax import engine as engine_lib
from zsl_jax import metrics
from zsl_jax import sharding
from zsl_jax.data import device_prefetch
from zsl_jax.models import clip as clip_lib
from zsl_jax.projects.hgr import loss as hgr_loss
from zsl_jax.projects.hgr.data import batchers
from zsl_jax.projects.hgr.data import imagenet21k

SPLIT = "in21k_d"
STEPS = 2


def demo_config(data_root, name="hgr_rn50", arg="demo", evals=False, **hgr):
  """A configs/<name>.py:<arg> config on `data_root`: STEPS steps, no baseline, the loss settings pinned."""
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  c.data.demo_root = str(data_root)
  c.compare_baseline = False
  c.total_steps = STEPS
  c.checkpoint.every_steps = STEPS
  c.log.progress = False
  c.log.tensorboard = False
  if "hgr" in c:
    c.hgr.update(dict(method="OM", sampler="brothers", level_weights="adaptive", index_by="depth",
                      weighting="both", out_ratio=1.0, in_ratio=1.0, num_negatives=16, k=1, classes_per_step=1,
                      negatives_from="all"), **hgr)
  for ev in c.evals.values():
    ev.at_start, ev.every_steps = False, 0
  if not evals:
    c.evals = {}
  return c


def engine(config, workdir):
  """An engine on one device (see the module docstring)."""
  return engine_lib.Engine(config, workdir, mesh=sharding.make_mesh(dict(data=1, fsdp=1), jax.devices()[:1]))


def variables_of(state):
  return {"params": state["params"], **state["model_state"]}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return tmp_path_factory.mktemp("hgr_switch_data")


@pytest.fixture(scope="module")
def base_run(data_root, tmp_path_factory):
  """(workdir, config, initial state) of a 2-step zero-shot demo run with `model.bn_train=True` (the source
  of the low-shot, near_simi and eval runs)."""
  workdir = tmp_path_factory.mktemp("hgr_switch_base")
  config = demo_config(data_root)
  config.model.bn_train = True
  eng = engine(config, workdir)
  init = jax.device_get(eng.build_state(with_optimizer=False))
  eng.train()
  return workdir, config, init


def first_batch(eng):
  """The engine data pipeline's step-0 batch on the devices."""
  it = device_prefetch.prefetch(eng.trainer.train_iterator(), eng.mesh, eng.trainer.replicated_batch_keys)
  try:
    return next(it)
  finally:
    getattr(it, "close", lambda: None)()


def step_contrasts(trainer, step=0):
  """(label, Contrasts) that `AddContrasts` sampled for `step` (same seed, same draw), for one-class steps;
  (labels, Contrasts with a slot per contrast) for steps of several classes."""
  rows = trainer._train_rows()  # pylint: disable=protected-access
  p = trainer.config.hgr.classes_per_step
  classes = batchers.ClassPureSampler(trainer.index.labels(rows), rows, trainer.config.batch_size, trainer.config.seed,
                                      p)
  rng = np.random.default_rng([trainer.config.seed, 7, step])
  if p > 1:
    labels = classes.step_labels(step)
    return labels, trainer.sampler.sample_step(labels, rng)
  label = classes.step_label(step)
  return label, trainer.sampler.sample(label, rng)


# ------------------------------------------------------------------ BatchNorm statistics
def _batch_stats_moved(before, after):
  return jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before["model_state"],
                                      after["model_state"]))


def test_bn_train_updates_batch_stats(base_run):
  workdir, config, init = base_run
  trained, step = cli.restore_state(config, workdir)
  assert step == STEPS
  moved = _batch_stats_moved(init, trained)
  assert moved and all(moved)  # every running mean and variance of the image tower


# ------------------------------------------------------------------ loss switches vs the formula
def _expected_loss(trainer, variables, batch, contrasts, level_w):
  """sum_g w_out[k_g] w_in[k_g, m_g] CE_g from unpacked prompt features, the weights from `level_w`.

  With P class slots (contrasts in P groups, slot by slot), the mean over slots of that sum, each slot's
  contrasts scoring only its B / P real images, weighted by its own class's loops.
  """
  img = np.asarray(trainer.encode_images(variables, batch["image"])[0])                # [B, E]
  txt = np.asarray(trainer.encode_prompts_fn(variables, trainer.tokens))                # [N, E]
  real = np.asarray(batch["_mask"])                                                     # [B]
  scale = np.exp(np.asarray(variables["params"]["clip"]["logit_scale"]))
  p = 1 if contrasts.outer_depths.ndim == 1 else contrasts.outer_depths.shape[0]
  total = 0.0
  for s in range(p):
    g_of_slot = contrasts.group_mask & (_slots(contrasts, p) == s)
    depths = (contrasts.outer_depths[s], contrasts.inner_depths[s]) if p > 1 else (contrasts.outer_depths,
                                                                                  contrasts.inner_depths)
    w_out, w_in = level_w(types.SimpleNamespace(outer_depths=depths[0], inner_depths=depths[1]))
    images = np.arange(len(img)) // (len(img) // p) == s                                # the slot's rows
    for g in np.flatnonzero(g_of_slot):
      nodes = contrasts.node_ids[g][contrasts.node_ids[g] >= 0]
      logits = scale * img[images & real] @ txt[nodes].T                                # [b, C]
      ce = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1) - logits[:, 0]
      k, m = contrasts.k_index[g], contrasts.m_index[g]
      total += w_out[k] * w_in[k, m] * ce.mean() / p
  return total


def _slots(contrasts, p):
  """The slot of every contrast of a step of p slots: p equal groups, slot by slot."""
  return np.arange(len(contrasts.k_index)) // (len(contrasts.k_index) // p)


def _softmax_weights(a, index, mask):
  """softmax over the valid positions of a[index] (a = the adaptive scheme's logits), 0 elsewhere."""
  raw = np.where(mask, np.exp(a[np.maximum(index, 0)]), 0.0)
  return raw / raw.sum(-1, keepdims=True)


def _weights(level_counts, index_by="depth", weighting="both"):
  """(w_out [K], w_in [K, M]) of the adaptive scheme at its initial theta, as the paper writes them."""
  a = 100.0 ** np.asarray(hgr_loss.init_theta(level_counts), np.float64)  # softmax logits 100 ** theta_d

  def weights(c):
    out_mask, in_mask = c.outer_depths >= 0, c.inner_depths >= 0
    by_out = c.outer_depths if index_by == "depth" else np.arange(len(c.outer_depths))
    by_in = c.inner_depths if index_by == "depth" else np.broadcast_to(np.arange(c.inner_depths.shape[1]),
                                                                       c.inner_depths.shape)
    w_out = _softmax_weights(a, by_out, out_mask)
    w_in = _softmax_weights(a, by_in, in_mask)
    if weighting == "in":
      w_out = out_mask / out_mask.sum()
    if weighting == "out":
      w_in = in_mask / in_mask.sum(-1, keepdims=True).clip(1)
    return w_out, w_in
  return weights


@pytest.fixture(scope="module")
def default_loss(data_root, tmp_path_factory):
  """Loss of the default OM switches (adaptive by depth, both loops) on the pipeline's first batch."""
  return _trainer_loss(demo_config(data_root), tmp_path_factory.mktemp("loss_default"))


def _trainer_loss(config, workdir):
  """(Trainer.loss under jit, its numpy formula, contrasts) on the step-0 batch of the initial weights."""
  eng = engine(config, workdir)
  variables = variables_of(eng.build_state(with_optimizer=False))
  batch = first_batch(eng)
  got = jax.jit(lambda v, b: eng.trainer.loss(v, b, None, 0)[0])(variables, batch)
  h = config.hgr
  label, contrasts = step_contrasts(eng.trainer)
  want = _expected_loss(eng.trainer, variables, batch, contrasts,
                        _weights(eng.trainer.level_counts, h.index_by, h.weighting))
  return float(got), want, label, contrasts


def test_default_loss_matches_the_formula(default_loss):
  got, want, _, contrasts = default_loss
  assert contrasts.group_mask.sum() == 6  # a leaf at depth 2, K = M = 1: anchors at 3 + 2 + 1 levels
  np.testing.assert_allclose(got, want, rtol=5e-5)


@pytest.mark.parametrize("switch", [dict(index_by="loop_position"), dict(weighting="in"), dict(weighting="out")])
def test_weight_switches_change_the_loss_as_the_formula_says(switch, default_loss, data_root, tmp_path):
  got, want, _, _ = _trainer_loss(demo_config(data_root, **switch), tmp_path)
  np.testing.assert_allclose(got, want, rtol=5e-5)
  assert abs(got - default_loss[0]) > 1e-3 * abs(default_loss[0]), (switch, got, default_loss[0])


def test_hierarchical_method_is_one_loop_over_the_label_path(default_loss, data_root, tmp_path):
  got, want, label, c = _trainer_loss(demo_config(data_root, method="hierarchical"), tmp_path)
  np.testing.assert_allclose(got, want, rtol=5e-5)
  real = c.group_mask
  assert real.sum() == 3 and set(c.k_index[real]) == {0}  # one contrast per depth of the leaf's path
  assert (c.node_ids[real, 0] == label).all()              # the positive is always the label
  assert list(c.inner_depths[0][c.inner_depths[0] >= 0]) == [0, 1, 2]
  assert abs(got - default_loss[0]) > 1e-3 * abs(default_loss[0])


def test_class_slots_score_each_slot_against_its_own_class(default_loss, data_root, tmp_path):
  """hgr.classes_per_step=3: 3 class-pure slots of 8 images, each scored against its own class's contrasts."""
  got, want, labels, c = _trainer_loss(demo_config(data_root, classes_per_step=3), tmp_path)
  np.testing.assert_allclose(got, want, rtol=5e-5)
  assert len(set(labels)) == 3 and c.outer_depths.shape == (3, 3)
  assert np.bincount(_slots(c, 3)[c.group_mask]).tolist() == [6] * 3
  for s, label in enumerate(labels):  # each slot's anchors: its own class and the class's 2 ancestors
    anchors = c.node_ids[(_slots(c, 3) == s) & c.group_mask, 0]
    assert label in anchors and len(set(anchors.tolist())) == 3
  assert abs(got - default_loss[0]) > 1e-3 * abs(default_loss[0])


# ------------------------------------------------------------------ negative samplers
def _sampled(data_root, workdir, steps=4, **hgr):
  """(trainer, [(label, Contrasts)]) of the first steps, checked against the pipeline's step-0 batch."""
  eng = engine(demo_config(data_root, **hgr), workdir)
  batch = first_batch(eng)
  drawn = [step_contrasts(eng.trainer, s) for s in range(steps)]
  ids = drawn[0][1].node_ids
  assert int(batch["num_prompts"]) == len(np.unique(ids[ids >= 0]))  # the batch holds exactly these prompts
  return eng.trainer, drawn


def _contrast_rows(c):
  for g in np.flatnonzero(c.group_mask):
    row = c.node_ids[g]
    yield int(row[0]), int(c.inner_depths[c.k_index[g], c.m_index[g]]), row[1:][row[1:] >= 0]


def test_brothers_negatives_share_the_level_parent(data_root, tmp_path):
  trainer, drawn = _sampled(data_root, tmp_path, sampler="brothers")
  h, checked = trainer.hierarchy, 0
  for _, c in drawn:
    for anchor, level, negatives in _contrast_rows(c):
      path = trainer.sampler.path(anchor)
      want = set(h.nodes_at_depth[0]) if level == 0 else set(h.children[path[level - 1]])
      assert len(negatives) and set(negatives.tolist()) == want - {anchor}  # all siblings (<= 16 of them)
      checked += 1
  assert checked == 6 * len(drawn)


def test_random_negatives_come_from_the_whole_candidate_set(data_root, tmp_path):
  trainer, drawn = _sampled(data_root, tmp_path, sampler="random", num_negatives=8)
  candidates = set(trainer.hierarchy.indices(trainer.index.class_list("all")).tolist())
  depths = set()
  for _, c in drawn:
    for anchor, _, negatives in _contrast_rows(c):
      assert len(negatives) == 8 and anchor not in negatives and set(negatives.tolist()) <= candidates
      depths |= set(trainer.hierarchy.depth[negatives].tolist())
  assert depths == {0, 1, 2}  # any depth, whatever the contrast's level (brothers: that level only)


@pytest.mark.parametrize("sampler", ["near_simi", "random"])
def test_train_tree_negatives_never_name_a_class_outside_the_training_tree(data_root, tmp_path, sampler):
  """hgr.negatives_from=train_tree: negatives only among the training classes and their ancestors (the
  demo's 9 unseen leaves never named); "all" (the reference) names them, with the same pools otherwise."""
  named = {}
  for source in ("all", "train_tree"):
    trainer, drawn = _sampled(data_root, tmp_path / source, steps=9, sampler=sampler, num_negatives=64,
                              negatives_from=source)
    h = trainer.hierarchy
    seen = h.indices(trainer.index.class_list("train"))
    tree = set(np.concatenate([trainer.sampler.path(int(c)) for c in seen]).tolist())
    negatives = set().union(*(set(neg.tolist()) for _, c in drawn for _, _, neg in _contrast_rows(c)))
    named[source] = negatives - tree
    if source == "train_tree":
      assert negatives and negatives <= tree
  assert len(tree) == 39 - 9 and named["train_tree"] == set()
  assert len(named["all"]) == 9  # every unseen leaf is some contrast's negative under the reference's rule


# ------------------------------------------------------------------ near_simi from a zsl_jax run
def test_near_simi_ranks_by_the_source_runs_text_tower(base_run, data_root, tmp_path):
  workdir, base_config, _ = base_run
  config = demo_config(data_root, sampler="near_simi", num_negatives=4)
  config.init.checkpoint = str(workdir)
  eng = engine(config, tmp_path)
  batch = first_batch(eng)
  source, _ = cli.restore_state(base_config, workdir)
  emb = np.asarray(eng.trainer.encode_prompts_fn(variables_of(source), eng.trainer.tokens))  # [N, E]
  h, checked = eng.trainer.hierarchy, 0
  drawn = [step_contrasts(eng.trainer, s) for s in range(3)]
  ids = drawn[0][1].node_ids
  assert int(batch["num_prompts"]) == len(np.unique(ids[ids >= 0]))  # the pipeline's batch holds these prompts
  for _, c in drawn:
    for anchor, level, negatives in _contrast_rows(c):
      path = set(eng.trainer.sampler.path(anchor).tolist())
      pool = [n for d in range(max(0, level - 1), min(level + 2, len(h.nodes_at_depth))) for n in h.nodes_at_depth[d]
              if n not in path and n not in h.children[anchor]]  # depths [d - k, d + k], k = 1
      sim = dict(zip(pool, emb[pool] @ emb[anchor]))
      chosen = set(negatives.tolist())
      assert len(chosen) == 4 and chosen <= set(pool), (anchor, level)
      # The 4 most similar of the pool (up to float noise between two encoders of the same weights).
      assert min(sim[n] for n in chosen) >= max(v for n, v in sim.items() if n not in chosen) - 1e-5
      checked += 1
  assert checked == 18


# ------------------------------------------------------------------ low-shot from the zero-shot run
def test_lowshot_trains_on_k_shots_and_evaluates_on_ls_test(base_run, data_root, tmp_path):
  """From the zero-shot run, with BatchNorm statistics frozen (`model.bn_train=False`, the default)."""
  workdir, base_config, _ = base_run
  config = demo_config(data_root, "hgr_rn50_lowshot", "demo,shots=2", evals=True)
  assert not config.model.bn_train
  config.init.checkpoint = str(workdir)
  eng = engine(config, tmp_path)
  index = eng.trainer.index
  rows = eng.trainer._train_rows()  # pylint: disable=protected-access
  seen = set(eng.trainer.hierarchy.indices(index.class_list("train")).tolist())
  labels = index.labels(rows)
  counts = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
  unseen = {c: n for c, n in counts.items() if c not in seen}
  assert len(unseen) == 21 and set(unseen.values()) == {2}  # 2 shots of every unseen class
  assert set(rows[np.isin(labels, list(seen))].tolist()) == set(index.rows("train", "train").tolist())
  assert eng.trainer.steps_per_epoch() == len(counts)  # class-pure: one batch per class (<= 24 images each)
  eng.train()
  rows_ls = index.rows("ls_test", config.evals[SPLIT].classes)
  assert not set(rows_ls.tolist()) & set(rows.tolist())
  [record] = metrics.read_metrics(tmp_path, split=SPLIT)
  assert record["step"] == STEPS and record["count"] == len(rows_ls) < len(index.rows("test", "rest"))
  source, _ = cli.restore_state(base_config, workdir)
  tuned, _ = cli.restore_state(config, tmp_path)
  assert not any(_batch_stats_moved(source, tuned))  # frozen: the source run's statistics, unchanged
  assert jax.tree.leaves(source["model_state"])


# ------------------------------------------------------------------ flat CLIP baseline
def test_clip_baseline_trains_and_gives_the_zero_shot_row(data_root, tmp_path):
  config = demo_config(data_root, "clip_rn50_baseline", evals=True)
  eng = engine(config, tmp_path / "ft")
  init = jax.device_get(eng.build_state(with_optimizer=False))
  eng.train()
  trained, _ = cli.restore_state(config, tmp_path / "ft")
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), init["params"], trained["params"]))
  assert sum(moved) >= 0.9 * len(moved), sum(moved)  # both towers trained
  train = metrics.read_metrics(tmp_path / "ft", split="train")
  assert train[-1]["step"] == STEPS and "accuracy" in train[-1] and np.isfinite(train[-1]["loss"])
  assert [r["step"] for r in metrics.read_metrics(tmp_path / "ft", split=SPLIT)] == [STEPS]
  # The zero-shot row: an unmodified converted CLIP evaluated with the baseline's config.
  clip_lib.save_converted(tmp_path / "clip", eng.trainer.clip_config,
                          clip_lib.init_variables(eng.trainer.clip_config, jax.random.PRNGKey(1)))
  config.mode, config.init.checkpoint = "eval", str(tmp_path / "clip")
  engine(config, tmp_path / "zs").evaluate()
  [row] = metrics.read_metrics(tmp_path / "zs", split=SPLIT)
  assert row["step"] == 0 and row["num_classes"] == 21 and row["count"] == len(eng.trainer.index.rows("test", "rest"))


# ------------------------------------------------------------------ reference loader emulation
def test_emulated_reference_loader_scores_its_duplicated_subset(base_run, data_root, tmp_path, monkeypatch):
  """The reference's geometry scaled down (5-image batches, 2 workers) so that the demo's 16 images per
  class show its repeats: batches 0, 0, 1, 1 of 5 -> 20 scored rows per class, 10 distinct."""
  workdir, _, _ = base_run
  reference = imagenet21k.reference_loader_rows
  monkeypatch.setattr(imagenet21k, "reference_loader_rows", functools.partial(reference, batch_size=5, num_workers=2))
  config = demo_config(data_root, evals=True)
  config.mode, config.init.checkpoint = "eval", str(workdir)
  config.evals[SPLIT].emulate_reference_loader = True
  eng = engine(config, tmp_path)
  eng.evaluate()
  rows = eng.trainer.index.rows("test", config.evals[SPLIT].classes)
  want = reference(rows, eng.trainer.index.labels(rows), batch_size=5, num_workers=2)
  [row] = metrics.read_metrics(tmp_path, split=SPLIT)
  assert row["count"] == len(want) == 21 * 20 and len(np.unique(want)) == 21 * 10
