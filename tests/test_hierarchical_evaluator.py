"""The hierarchical evaluator end to end on a small tree, through the engine's contract.

Built from an `EvalContext` whose offer is hand-made (the images are the scores themselves), it
must report the metrics of `metrics.from_counts`, the same on 1 and 8 devices, and move only
O(classes) numbers to the host, however many test images there are.
"""
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zsl_jax import contracts
from zsl_jax import sharding
from zsl_jax.data import pipeline
from zsl_jax.evaluators import base
from zsl_jax.projects.hgr import evaluator as hgr_evaluator
from zsl_jax.projects.hgr.hierarchy import graph as graph_lib

# 0 animal > 2 dog > {5 terrier, 6 hound}; 0 animal > 3 cat > 7 tabby; 1 plant > 4 tree.
ANCESTORS = [[], [], [0], [0], [1], [0, 2], [0, 2], [0, 3]]
WNIDS = [f"n{i:08d}" for i in range(8)]
UNSEEN = [WNIDS[i] for i in (4, 5, 6, 7)]


class _Index:
  def class_list(self, name):
    return {"rest": UNSEEN, "all": WNIDS}[name]


def _offer(num_images, seed=0):
  """Images of the unseen leaves whose 'pixels' are their scores over the 8 nodes: noise, plus 1.5 on
  the class and its ancestors."""
  rng = np.random.default_rng(seed)
  hierarchy = graph_lib.Hierarchy(WNIDS, WNIDS, [p[-1:] for p in ANCESTORS], ANCESTORS)
  labels = rng.choice([4, 5, 6, 7], num_images).astype(np.int32)
  on_path = (hierarchy.path_array()[labels][:, :, None] == np.arange(8)).any(1)    # [n, 8]
  scores = (rng.normal(size=(num_images, 8)) + 1.5 * on_path).astype(np.float32)
  examples = [{"image": scores[i], "label": labels[i], "_skipped": np.bool_(False)} for i in range(num_images)]

  def eval_dataset(split, classes, global_batch_size, emulate_reference_loader=False):
    del split, classes, emulate_reference_loader
    return pipeline.padded_eval_dataset(grain.MapDataset.source(examples), global_batch_size,
                                        zero_on_pad=("_skipped",)), num_images

  tokens = np.zeros((8, 8), np.int32)
  tokens[:, 0] = np.arange(8)
  return {"hierarchy": hierarchy, "index": _Index(), "prompt_tokens": tokens, "eval_dataset": eval_dataset,
          "encode_prompts": jax.jit(lambda v, t: jax.nn.one_hot(t[:, 0], 8)),
          "encode_images": jax.jit(lambda v, x: x)}


def _run(tmp_path, num_images, devices):
  mesh = sharding.make_mesh(dict(data=len(devices), fsdp=1), devices)
  context = contracts.EvalContext(name="in21k_d", mesh=mesh, workdir=tmp_path, offer=_offer(num_images))
  ev = hgr_evaluator.Evaluator(context, batch_size=16, prompt_batch=8, tag="t", num_threads=1)
  return ev.run({"params": {}, "model_state": {}}, 7)


@pytest.fixture
def host_bytes(monkeypatch):
  """Bytes of every array that `jax.device_get` (the loop's only way to the host) returns."""
  moved = []
  device_get = jax.device_get

  def spy(tree):
    out = device_get(tree)
    moved.append(sum(np.asarray(x).nbytes for x in jax.tree.leaves(out)))
    return out

  monkeypatch.setattr(jax, "device_get", spy)
  return moved


def test_what_reaches_the_host_does_not_grow_with_the_images(tmp_path, host_bytes):
  small = _run(tmp_path, 40, jax.devices())
  small_bytes = sum(host_bytes)
  host_bytes.clear()
  large = _run(tmp_path, 400, jax.devices())
  assert (small["count"], large["count"]) == (40, 400)
  assert 0 < sum(host_bytes) == small_bytes < 1000  # a few dozen int32 counts, once per run


def test_same_metrics_on_one_and_eight_devices(tmp_path):
  one = _run(tmp_path / "one", 123, jax.devices()[:1])
  eight = _run(tmp_path / "eight", 123, jax.devices())
  assert one == eight
  assert one["count"] == 123 and one["skipped"] == 0 and one["num_classes"] == 4
  # The scores favour the true class: every metric is well above chance, and within [0, 1].
  for key in ("hit@1", "tor", "por", "path_ratio"):
    assert 0.4 < one[key] <= 1.0, (key, one)
  assert one["hit@1"] <= one["hit@2"] <= one["hit@5"] == one["hit@20"] == 1.0  # only 4 candidates


def test_counts_match_a_direct_computation(tmp_path):
  """Hit@1 and TOR recomputed in numpy from the same scores."""
  got = _run(tmp_path, 50, jax.devices())
  offer = _offer(50)
  batches, _ = offer["eval_dataset"]("test", "rest", 50)
  (batch,) = list(batches)
  scores, labels = batch["image"], batch["label"]
  candidates = np.array([4, 5, 6, 7])
  hit1 = np.mean(candidates[np.argmax(scores[:, candidates], 1)] == labels)
  paths = offer["hierarchy"].path_array()[labels]
  tor = np.mean((paths == np.argmax(scores, 1)[:, None]).any(1))
  assert (got["hit@1"], got["tor"]) == (pytest.approx(hit1, abs=1e-12), pytest.approx(tor, abs=1e-12))
  assert (tmp_path / "plots" / "levels_t.json").exists()


def test_evaluate_batches_sums_on_device_and_drops_padding_rows():
  mesh = sharding.make_mesh(dict(data=8, fsdp=1))
  source = [{"x": np.float32(i), "label": np.int32(i % 3)} for i in range(21)]
  batches = pipeline.padded_eval_dataset(grain.MapDataset.source(source), 8)
  fn = jax.jit(lambda b: ({"n": b["_mask"].sum(), "x": jnp.where(b["_mask"], b["x"], 0).sum()}, {"x": b["x"]}))
  sums, rows = base.evaluate_batches(batches, mesh, fn)
  assert (int(sums["n"]), float(sums["x"])) == (21, float(sum(range(21))))
  assert sorted(rows["x"].tolist()) == list(map(float, range(21)))
  by_source = base.map_batches(source, jax.jit(lambda b: {"y": 2 * b["x"]}), mesh=mesh, global_batch_size=8)
  np.testing.assert_array_equal(by_source["y"], 2.0 * np.arange(21))
  np.testing.assert_array_equal(by_source["label"], np.arange(21) % 3)
