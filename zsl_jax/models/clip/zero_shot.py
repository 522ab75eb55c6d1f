"""Zero-shot classifier weights from class names x prompt templates, cached on disk.

Encoding 21K class names (x 80 templates) is the expensive step of zero-shot evaluation, so
prompts are sorted by length and encoded in fixed-size batches truncated after their last
end-of-text token (exact: the text tower is causal and pools at EOT); the per-class mean of the
L2-normalised prompt embeddings is normalised again, as open_clip's
`build_zero_shot_classifier` does. The result is cached under a key that hashes the model
weights, class names and templates, so a changed checkpoint never reuses stale weights.

Two users: `build_classifier` for a `LoadedCLIP`, and the hierarchical evaluator's prompt-ensemble
variant (`zsl_jax.projects.hgr.eval_suite.variants`), which encodes with the trainer's own text
tower and keys the cache by `weights_fingerprint` of the evaluated variables.
"""
import hashlib
import json
import logging
import os
import tempfile

import jax
import numpy as np

from zsl_jax.text import tokenizer as tok_lib

logger = logging.getLogger(__name__)

CLASSES_PER_CALL = 256  # classes whose templates are encoded together: bounded host memory for 21K x 80 prompts


def weights_fingerprint(variables):
  """SHA-256 over every leaf's path and float32 bytes (host arrays): a cache key for derived artefacts."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(variables)[0], key=lambda t: str(t[0])):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return h.hexdigest()


def cache_key(model, classnames, templates):
  """SHA-256 over (model fingerprint, class names, templates); `model` may be the fingerprint string itself."""
  h = hashlib.sha256((model if isinstance(model, str) else model.fingerprint).encode())
  h.update(json.dumps([list(classnames), list(templates)]).encode())
  return h.hexdigest()


def cache_path(cache_dir, fingerprint, classnames, templates):
  """Where the class embeddings of (weights, names, templates) live under `cache_dir`."""
  return os.path.join(cache_dir, f"zeroshot_{cache_key(fingerprint, classnames, templates)[:24]}.npy")


def save_atomic(path, array):
  """Writes `array` to `path` through a temporary file: readers never see a partial file."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=os.path.dirname(path) or ".", suffix=".npy", delete=False) as f:
    np.save(f, array)
  os.replace(f.name, path)


def encode_prompts(model, prompts, batch_size=256, vocab_path=None):
  """Prompts -> L2-normalised text embeddings [P, E] float32, in input order."""
  tokens = tok_lib.tokenize(list(prompts), model.config.context_length, vocab_path)  # [P, 77]
  order = np.argsort(np.argmax(tokens, axis=1), kind="stable")  # short prompts together
  out = np.zeros((len(prompts), model.config.embed_dim), np.float32)
  for start in range(0, len(prompts), batch_size):
    idx = order[start:start + batch_size]
    batch = np.zeros((batch_size, tokens.shape[1]), np.int32)  # fixed batch: one compile per length
    batch[:len(idx)] = tokens[idx]
    feats = np.asarray(model.encode_text(batch))[:len(idx)]  # truncated inside encode_text
    out[idx] = feats / np.linalg.norm(feats, axis=1, keepdims=True)
  return out


def class_embeddings(encode, classnames, templates):
  """[C, E] float32: per class, the L2-normalised mean of its templates' normalised encodings.

  `encode(prompts)` -> [P, E] text embeddings of a list of strings (normalised here again). Classes
  go through in groups of `CLASSES_PER_CALL`, so host memory stays bounded for 21K classes x 80 templates.
  """
  classnames, templates = list(classnames), list(templates)
  out = []
  for start in range(0, len(classnames), CLASSES_PER_CALL):
    names = classnames[start:start + CLASSES_PER_CALL]
    emb = np.asarray(encode([t.format(c) for c in names for t in templates]), np.float32)  # class-major
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb.reshape(len(names), len(templates), -1).mean(axis=1)
    out.append(emb / np.linalg.norm(emb, axis=1, keepdims=True))
  return np.concatenate(out).astype(np.float32)                                # [C, E]


def build_classifier(model, classnames, templates, batch_size=256, cache_dir=None, vocab_path=None):
  """[num_classes, embed_dim] float32 L2-normalised class embeddings (template ensemble).

  Args:
    model: a `zsl_jax.models.clip.LoadedCLIP` (anything with `encode_text`, `config`, `fingerprint`).
    classnames: class names; templates: format strings with one `{}`.
    batch_size: prompts per text-encoder call.
    cache_dir: if set, the result is read from / written to `<cache_dir>/zeroshot_<key>.npy`.
  """
  classnames, templates = list(classnames), list(templates)
  path = None
  if cache_dir is not None:
    path = cache_path(cache_dir, model.fingerprint, classnames, templates)
    if os.path.isfile(path):
      return np.load(path)
  emb = class_embeddings(lambda prompts: encode_prompts(model, prompts, batch_size, vocab_path), classnames,
                         templates)
  if path is not None:
    save_atomic(path, emb)
  return emb
