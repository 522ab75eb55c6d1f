"""CLIP BPE tokenisation without torch and without a vocabulary download.

The BPE merges come from `instant-clip-tokenizer` (numpy-only wheel with the vocabulary compiled
in) or from a user-given `bpe_simple_vocab_16e6.txt[.gz]`. OpenAI's tokenizer first cleans the text
(ftfy.fix_text, HTML unescape twice, whitespace collapse) and lowercases it; instant-clip-tokenizer
only lowercases, so the cleaning is done here. ftfy is used when installed (exact OpenAI
behaviour on any text); without it a small equivalent (NFC, curly quotes, control characters)
runs, which gives identical ids on the ImageNet-21K lemmas and the OpenAI prompt templates.
"""
import functools
import gzip
import html
import os
import re
import shutil
import tempfile
import unicodedata

import numpy as np

from zsl_jax.errors import UserError

VOCAB_SIZE = 49408
SOT, EOT = 49406, 49407
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"',
                         "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u00b4": "'", "\u2032": "'"})
_LIGATURES = str.maketrans({"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
                            "\ufb05": "st", "\ufb06": "st", "\u0132": "IJ", "\u0133": "ij"})


def _fix_text_light(text):
  """The subset of ftfy.fix_text that matters for clean text (no mojibake repair)."""
  text = text.translate(_QUOTES).translate(_LIGATURES)
  text = "".join(ch for ch in text if ch in "\t\n\r" or unicodedata.category(ch) != "Cc")
  return unicodedata.normalize("NFC", text)


def _fix_text_fn(use_ftfy):
  if use_ftfy:
    try:
      import ftfy  # pylint: disable=import-outside-toplevel
      return ftfy.fix_text
    except ImportError:
      pass
  return _fix_text_light


def clean_text(text, use_ftfy=True):
  """OpenAI's basic_clean + whitespace_clean (lowercasing is left to the BPE step)."""
  text = _fix_text_fn(use_ftfy)(text)
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip()


class ClipTokenizer:
  """Texts -> int32 [N, context_length]: SOT, BPE ids, EOT, zero padding; long texts truncated
  keeping EOT as the last id (as open_clip and OpenAI's `clip.tokenize(truncate=True)`)."""

  def __init__(self, vocab_path=None, use_ftfy=True):
    self.use_ftfy = use_ftfy
    self._bpe = _load_bpe(vocab_path)

  def __call__(self, texts, context_length=77):
    if isinstance(texts, str):
      texts = [texts]
    cleaned = [clean_text(t, self.use_ftfy) for t in texts]
    if not cleaned:
      return np.zeros((0, context_length), np.int32)
    return self._bpe.tokenize_batch(cleaned, context_length).astype(np.int32)

  def encode(self, text):
    """BPE ids of one text, without SOT/EOT."""
    return list(self._bpe.encode(clean_text(text, self.use_ftfy)))


def _load_bpe(vocab_path):
  try:
    from instant_clip_tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError("no CLIP BPE vocabulary: install `instant-clip-tokenizer` (pip install "
                    "'instant-clip-tokenizer>=0.1.1,<0.2'), which ships it") from None
  if vocab_path is None:
    return Tokenizer()
  vocab_path = os.fspath(vocab_path)
  if not os.path.isfile(vocab_path):
    raise UserError(f"CLIP vocabulary {vocab_path} does not exist; pass the path of "
                    "bpe_simple_vocab_16e6.txt.gz (shipped by open_clip) or omit it to use the one in "
                    "instant-clip-tokenizer")
  try:
    if vocab_path.endswith(".gz"):
      with gzip.open(vocab_path, "rb") as src, tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as dst:
        shutil.copyfileobj(src, dst)
      try:
        return Tokenizer.load(dst.name, VOCAB_SIZE)
      finally:
        os.unlink(dst.name)
    return Tokenizer.load(vocab_path, VOCAB_SIZE)
  except (OSError, EOFError, ValueError) as e:
    raise UserError(f"could not read the CLIP vocabulary {vocab_path} ({e}); it must be OpenAI's "
                    "bpe_simple_vocab_16e6.txt(.gz), e.g. the copy inside the open_clip package") from None


@functools.lru_cache(maxsize=4)
def get_tokenizer(vocab_path=None, use_ftfy=True):
  """A cached `ClipTokenizer` (building one parses the 49k merges)."""
  return ClipTokenizer(vocab_path, use_ftfy)


def tokenize(texts, context_length=77, vocab_path=None):
  """str or list of str -> int32 [N, context_length] CLIP token ids."""
  return get_tokenizer(vocab_path)(texts, context_length)


def truncate_tokens(tokens, multiple=8):
  """Drops columns after the batch's last EOT: tokens[:, :L'] with L' the smallest multiple of
  `multiple` >= max EOT position + 1, capped at tokens.shape[1] (few distinct L' = few recompiles).

  Exact for CLIP's causal, EOT-pooled text tower. EOT is each row's largest id (argmax).
  """
  tokens = np.asarray(tokens)
  if tokens.shape[0] == 0:
    return tokens
  needed = int(np.argmax(tokens, axis=1).max()) + 1
  length = min(-(-needed // multiple) * multiple, tokens.shape[1])
  return tokens[:, :length]
