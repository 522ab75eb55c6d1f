"""Zero-shot classifier weights from class names x prompt templates, cached on disk.

Encoding 21K class names (x 80 templates) is the expensive step of zero-shot evaluation, so
prompts are sorted by length and encoded in fixed-size batches truncated after their last
end-of-text token (exact: the text tower is causal and pools at EOT); the per-class mean of the
L2-normalised prompt embeddings is normalised again, as open_clip's
`build_zero_shot_classifier` does. The result is cached under a key that hashes the model
weights, class names and templates, so a changed checkpoint never reuses stale weights.
"""
import hashlib
import json
import os
import tempfile

import numpy as np

from zsl_jax.text import tokenizer as tok_lib


def cache_key(model, classnames, templates):
  """SHA-256 over (model fingerprint, class names, templates)."""
  h = hashlib.sha256(model.fingerprint.encode())
  h.update(json.dumps([list(classnames), list(templates)]).encode())
  return h.hexdigest()


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
    path = os.path.join(cache_dir, f"zeroshot_{cache_key(model, classnames, templates)[:24]}.npy")
    if os.path.isfile(path):
      return np.load(path)
  prompts = [t.format(c) for c in classnames for t in templates]  # class-major
  emb = encode_prompts(model, prompts, batch_size, vocab_path)
  emb = emb.reshape(len(classnames), len(templates), -1).mean(axis=1)
  emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)  # [C, E]
  if path is not None:
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".npy", delete=False) as f:
      np.save(f, emb)
    os.replace(f.name, path)
  return emb
