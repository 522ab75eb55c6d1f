"""One sampling path: every batch is a pure function of (seed, step), the same for any host count.

The trainers' own iterators are built as host p of P would build them (jax.process_index and
jax.process_count patched around `train_iterator()`), and the hosts' batches must concatenate to
the single-host batch: 2 processes x 4 devices train on exactly the batches of 1 x 8.
"""
import collections
import pickle

import jax
import numpy as np
import pytest

from configs import clip_rn50_baseline
from configs import hgr_rn50
from zsl_jax.data import sampling
from zsl_jax.errors import UserError
from zsl_jax.projects.hgr import clip_baseline
from zsl_jax.projects.hgr import trainer as hgr_trainer
from zsl_jax.projects.hgr.data import batchers


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("hgr_demo_data"))


def _mesh(num_devices):
  return jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("data",))


def _host_iterator(trainer, monkeypatch, process_index, process_count):
  """`trainer.train_iterator()` as process `process_index` of `process_count` builds it."""
  with monkeypatch.context() as m:
    m.setattr(jax, "process_index", lambda *a, **k: process_index)
    m.setattr(jax, "process_count", lambda *a, **k: process_count)
    return trainer.train_iterator()


def _assert_hosts_concatenate(make_trainer, monkeypatch, steps, replicated=()):
  """Batches of 2 hosts x 4 devices, concatenated, equal those of 1 host x 8 devices for `steps` steps."""
  single = _host_iterator(make_trainer(8), monkeypatch, 0, 1)
  hosts = [_host_iterator(make_trainer(4), monkeypatch, p, 2) for p in range(2)]
  for step in range(steps):
    want = next(single)
    parts = [next(h) for h in hosts]
    for key, value in want.items():
      if key in replicated:
        for part in parts:
          np.testing.assert_array_equal(part[key], value, err_msg=f"step {step} {key}")
      else:
        assert parts[0][key].shape[0] == value.shape[0] // 2, key
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value, err_msg=f"step {step} {key}")


def _clip_trainer(demo_root, batch_size=40):
  def make(num_devices):
    config = clip_rn50_baseline.get_config("demo")
    config.data.demo_root = demo_root
    config.data.num_threads = 2
    config.batch_size = batch_size
    return clip_baseline.Trainer(config, _mesh(num_devices))
  return make


def test_clip_baseline_batches_of_2x4_equal_1x8_across_an_epoch(demo_root, monkeypatch):
  make = _clip_trainer(demo_root)
  trainer = make(8)
  rows = trainer._train_rows()  # pylint: disable=protected-access
  assert len(rows) == 432 and trainer.steps_per_epoch() == 432 // 40  # step 10 straddles the epoch boundary
  _assert_hosts_concatenate(make, monkeypatch, steps=12)
  # The stream is the global shuffled sampler's: step 10 ends epoch 0 and starts epoch 1.
  sampler = sampling.ShuffledSampler(rows, 40, trainer.config.seed)
  it = _host_iterator(trainer, monkeypatch, 0, 1)
  for step in range(11):
    b = next(it)
    np.testing.assert_array_equal(b["label"], trainer.index.labels(sampler(step)))
  size = trainer.config.model.custom.image_resolution
  assert b["_mask"].all() and b["image"].shape == (40, size, size, 3)


@pytest.mark.parametrize("classes_per_step", [1, 4])
def test_hgr_class_pure_batches_and_contrasts_of_2x4_equal_1x8(demo_root, monkeypatch, classes_per_step):
  def make(num_devices):
    del num_devices  # Every process of a 2 x 4 run sees the global 8-device mesh, which sizes the prompt chunks.
    config = hgr_rn50.get_config("demo")
    config.data.demo_root = demo_root
    config.data.num_threads = 2
    config.batch_size = 8
    config.hgr.classes_per_step = classes_per_step
    return hgr_trainer.Trainer(config, _mesh(8))
  _assert_hosts_concatenate(make, monkeypatch, steps=20, replicated=hgr_trainer.Trainer.replicated_batch_keys)


def test_clip_baseline_iterator_resumes_exactly_from_its_state(demo_root, monkeypatch):
  make = _clip_trainer(demo_root, batch_size=16)
  it = _host_iterator(make(4), monkeypatch, 1, 2)
  for _ in range(26):  # 27 steps of 16 rows = one epoch of 432
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  resumed = _host_iterator(make(4), monkeypatch, 1, 2)
  resumed.set_state(state)
  for w in want:
    got = next(resumed)
    for key in w:
      np.testing.assert_array_equal(got[key], w[key])


def _rows_and_labels():
  labels = np.repeat(np.arange(9), np.arange(9) + 3)  # 9 classes of 3..11 rows: 63 rows
  return np.arange(labels.size) * 10, labels


def _samplers():
  rows, labels = _rows_and_labels()
  return {"shuffled": sampling.ShuffledSampler(rows, 12, 4),
          "uniform": sampling.UniformSampler(rows, 12, 4),
          "balanced": sampling.BalancedSampler(rows, labels, 20, 4),  # 9 classes x 2 = 18 rows
          "class_pure": batchers.ClassPureSampler(labels, rows, 12, 4),
          "class_slots": batchers.ClassPureSampler(labels, rows, 12, 4, classes_per_step=3)}


@pytest.mark.parametrize("name", ["shuffled", "uniform", "balanced", "class_pure", "class_slots"])
@pytest.mark.parametrize("per_row", [False, True])
def test_every_sampler_gives_the_same_global_batches_for_any_host_count(name, per_row):
  sampler = _samplers()[name]
  load = (lambda r: {"row": r["row"] + 1}) if per_row else (lambda rows: {"row": rows + 1})
  build = lambda p, count: sampling.iterator(sampler, load, per_row=per_row, num_threads=2, process_index=p,
                                             process_count=count)
  single = build(0, 1)
  hosts = {count: [build(p, count) for p in range(count)] for count in (2, 3)}
  for step in range(12):
    want = next(single)["row"]
    np.testing.assert_array_equal(want, np.asarray(sampler(step)) + 1)
    for count, its in hosts.items():
      np.testing.assert_array_equal(np.concatenate([next(it)["row"] for it in its]), want, err_msg=f"{count} hosts")


def test_sampler_batch_sizes_and_padding():
  s = _samplers()
  assert {k: v.batch_size for k, v in s.items()} == {"shuffled": 12, "uniform": 12, "balanced": 18, "class_pure": 12,
                                                     "class_slots": 12}
  rows, labels = _rows_and_labels()
  for step in range(9):  # One cycle over the 9 classes: class c (3 + c rows) is padded with -1 up to 12.
    batch = s["class_pure"](step)
    real = batch[batch != sampling.PADDING]
    assert len(real) == 3 + s["class_pure"].step_label(step)
    assert set(labels[real // 10].tolist()) == {s["class_pure"].step_label(step)}
    assert (batch[len(real):] == sampling.PADDING).all()
  b = s["balanced"](0)
  np.testing.assert_array_equal(np.bincount(labels[b // 10]), np.full(9, 2))
  assert np.unique(s["uniform"](0)).size == 12


def test_class_slots_hold_one_class_each_and_visit_every_class_once_a_cycle():
  """classes_per_step=3: slot j of step s is the class at cycle position 3s + j, its rows and its padding."""
  rows, labels = _rows_and_labels()
  one, slots = _samplers()["class_pure"], _samplers()["class_slots"]
  for cycle in range(3):  # 9 classes = 3 steps of 3 slots a cycle
    steps = range(3 * cycle, 3 * cycle + 3)
    got = [slots.step_labels(s) for s in steps]
    assert sorted(sum(got, [])) == list(range(9))
    assert sum(got, []) == [one.step_label(s) for s in range(9 * cycle, 9 * cycle + 9)]  # the same class order
    for step, step_labels in zip(steps, got):
      batch = slots(step).reshape(3, 4)
      for slot, label in zip(batch, step_labels):
        real = slot[slot != sampling.PADDING]
        n = 3 + label  # rows of the class; visit `cycle` takes its batch cycle mod ceil(n / 4) of 4 rows
        j = cycle % -(-n // 4)
        assert set(labels[real // 10].tolist()) == {label} and len(set(real.tolist())) == min(4, n - 4 * j)
        assert (slot[len(real):] == sampling.PADDING).all()  # a short batch is padded within its slot
  # A class's visits walk through its seeded permutation 4 rows at a time.
  seen = collections.defaultdict(list)
  for step in range(9):
    for slot, label in zip(slots(step).reshape(3, 4), slots.step_labels(step)):
      seen[label].append(slot[slot != sampling.PADDING])
  for label, visits in seen.items():
    n = (labels == label).sum()
    assert len(visits) == 3
    if n >= 12:  # three visits of 4 never repeat a row within one pass over the class
      assert len(set(np.concatenate(visits).tolist())) == 12
  assert batchers.steps_per_epoch(labels, 12, classes_per_step=3) == -(-sum(-(-(labels == c).sum() // 4)
                                                                           for c in range(9)) // 3)


@pytest.mark.parametrize("value, fragment", [(5, "does not divide batch_size=12"), (0, "whole number"),
                                             (True, "whole number"), (12, "exceeds the 9 training classes")])
def test_bad_classes_per_step_is_named_with_its_fix(value, fragment):
  rows, labels = _rows_and_labels()
  with pytest.raises(UserError, match=fragment):
    batchers.ClassPureSampler(labels, rows, 12, 4, classes_per_step=value)


def test_shuffled_sampler_is_a_pure_function_of_seed_and_step():
  rows, _ = _rows_and_labels()
  a = sampling.ShuffledSampler(rows, 12, 4)
  forward = [a(step) for step in range(12)]
  stream = np.concatenate(forward)  # 144 rows = 2 epochs of 63 + 18: every epoch a permutation of all rows
  for e in range(2):
    np.testing.assert_array_equal(np.sort(stream[e * 63:(e + 1) * 63]), rows)
  assert not np.array_equal(stream[:63], stream[63:126])
  b = pickle.loads(pickle.dumps(a))  # What a grain worker process receives: no cached permutations.
  assert b._cache == ()  # pylint: disable=protected-access
  for step in reversed(range(12)):
    np.testing.assert_array_equal(b(step), forward[step])
  assert not np.array_equal(sampling.ShuffledSampler(rows, 12, 5)(0), forward[0])


def test_host_slice_needs_a_batch_that_divides_by_the_process_count():
  np.testing.assert_array_equal(sampling.host_slice(np.arange(12), 2, 3), [8, 9, 10, 11])
  with pytest.raises(UserError, match="not divisible by the 5 processes"):
    sampling.host_slice(np.arange(12), 0, 5)
  with pytest.raises(UserError, match="not divisible by the 5 processes"):
    sampling.iterator(_samplers()["shuffled"], lambda rows: {"row": rows}, process_index=0, process_count=5)
  with pytest.raises(UserError, match="no examples"):
    sampling.ShuffledSampler(np.zeros(0, np.int64), 4, 0)


@pytest.mark.parametrize("per_row", [False, True])
def test_built_iterator_resumes_exactly_from_its_state(per_row):
  sampler = _samplers()["balanced"]
  load = (lambda r: dict(r)) if per_row else (lambda rows: {"row": rows})
  step_map = lambda step, batch: {**batch, "step": np.int64(step)}
  build = lambda: sampling.iterator(sampler, load, per_row=per_row, step_map=step_map, num_threads=2,
                                    process_index=1, process_count=2)
  it = build()
  for _ in range(5):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]
  resumed = build()
  resumed.set_state(state)
  for step, w in enumerate(want, start=5):
    got = next(resumed)
    assert int(got["step"]) == int(w["step"]) == step
    np.testing.assert_array_equal(got["row"], w["row"])
    np.testing.assert_array_equal(got["row"], sampling.host_slice(sampler(step), 1, 2))
