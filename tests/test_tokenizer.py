"""Token ids equal open_clip's on every ImageNet-21K lemma and on the 80 OpenAI prompt templates."""
import importlib.util
import os

import numpy as np
import pytest

from zsl_jax.errors import UserError
from zsl_jax.text import templates
from zsl_jax.text import tokenize
from zsl_jax.text import tokenizer
from zsl_jax.text import truncate_tokens


def _lemma_lines():
  spec = importlib.util.find_spec("timm")
  if spec is None:
    pytest.skip("timm (ships imagenet_synset_to_lemma.txt) is not installed")
  info = os.path.join(spec.submodule_search_locations[0], "data", "_info", "imagenet_synset_to_lemma.txt")
  with open(info, encoding="utf-8") as f:
    return [line.split("\t", 1)[1] for line in f.read().splitlines()]


@pytest.fixture(scope="module")
def corpus():
  lines = _lemma_lines()
  assert len(lines) == 21844
  lemmas = sorted({lemma.strip() for line in lines for lemma in line.split(",")} - {""})
  prompts = [t.format(name) for name in lemmas[::50] for t in templates.OPENAI_IMAGENET_TEMPLATES]
  return lines, lemmas, prompts


@pytest.fixture(scope="module")
def open_clip_tokenize():
  from zsl_jax.models.torch_io import import_open_clip  # pylint: disable=import-outside-toplevel
  oc = import_open_clip()
  tok = oc.get_tokenizer("RN50-quickgelu")
  return lambda texts: tok(texts).numpy()


@pytest.mark.torch
def test_ids_match_open_clip_on_lemmas_and_prompts(corpus, open_clip_tokenize):
  lines, lemmas, prompts = corpus
  for texts in (lines, lemmas, prompts):
    ours = tokenize(texts)
    assert ours.dtype == np.int32 and ours.shape == (len(texts), 77)
    np.testing.assert_array_equal(ours, open_clip_tokenize(texts))
  assert len(prompts) > 100_000 // 50


@pytest.mark.torch
def test_ftfy_free_cleaning_is_identical_on_corpus(corpus, open_clip_tokenize):
  ftfy = pytest.importorskip("ftfy")
  lines, lemmas, prompts = corpus
  texts = lines + lemmas + prompts[:5000]
  assert [ftfy.fix_text(t) for t in texts] == [tokenizer._fix_text_light(t) for t in texts]
  light = tokenizer.ClipTokenizer(use_ftfy=False)
  np.testing.assert_array_equal(light(lines), open_clip_tokenize(lines))


@pytest.mark.torch
def test_messy_text_and_truncation_match_open_clip(open_clip_tokenize):
  texts = ["  A   Photo\tof a &amp;amp; Tench!  ", "Ça va? naïve café’s “quotes”", "x " * 200, "",
           "emoji 🐶 and CJK 犬 mixed"]
  np.testing.assert_array_equal(tokenize(texts), open_clip_tokenize(texts))
  np.testing.assert_array_equal(tokenize(texts, context_length=16)[:, -1][2], tokenizer.EOT)


def test_known_ids_and_vocab_path():
  ids = tokenize(["a photo of a tench."])
  assert ids[0, :9].tolist() == [49406, 320, 1125, 539, 320, 1149, 634, 269, 49407]
  assert not ids[0, 9:].any()
  spec = importlib.util.find_spec("open_clip")
  if spec is not None:
    path = os.path.join(spec.submodule_search_locations[0], "bpe_simple_vocab_16e6.txt.gz")
    np.testing.assert_array_equal(tokenize(["a photo of a tench."], vocab_path=path), ids)


def test_missing_vocabulary_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    tokenizer.ClipTokenizer(vocab_path=str(tmp_path / "nope.txt.gz"))
  bad = tmp_path / "bad.txt.gz"
  bad.write_bytes(b"\x1f\x8b not really gzip")
  with pytest.raises(UserError, match="could not read"):
    tokenizer.ClipTokenizer(vocab_path=str(bad))


def test_truncate_tokens_buckets():
  ids = tokenize(["a", "a photo of a tench, a kind of fish found in european rivers."])
  eot = int(np.argmax(ids[1]))
  out = truncate_tokens(ids)
  assert out.shape == (2, -(-(eot + 1) // 8) * 8)
  np.testing.assert_array_equal(out, ids[:, :out.shape[1]])
  assert truncate_tokens(tokenize(["word " * 100])).shape == (1, 77)
  assert truncate_tokens(ids, multiple=1).shape == (2, eot + 1)
