"""Find and load WordNet 3.0 offline, whatever way the user installed it.

ImageNet WNIDs are WordNet 3.0 noun offsets (`n02084071` = dog.n.01), so class names and the
WordNet hierarchy source need exactly that version. It comes from nltk's downloader
(`corpora/wordnet` on nltk's data path) or from Debian/Ubuntu's `wordnet-base` package
(/usr/share/wordnet). nltk 3.10 cannot read the Debian directory as is: the package lacks the
`lexnames` file nltk opens at start-up, and nltk's path sandbox only accepts corpus roots on its
data path. So a Debian-style directory is copied once into a private nltk data root under
~/.cache/zsl_jax together with the `lexnames` table shipped in `zsl_jax/resources`.
"""
import os
import pathlib
import shutil
import warnings

from zsl_jax.errors import UserError

ENV_VAR = "ZSL_JAX_WORDNET"
DEBIAN_DIR = "/usr/share/wordnet"
_REQUIRED = ("data.noun", "index.noun", "data.verb", "index.verb", "data.adj", "index.adj",
             "data.adv", "index.adv")
_LEXNAMES = pathlib.Path(__file__).resolve().parents[1] / "resources" / "lexnames"  # projects/hgr/resources
_REMEDY = ("install WordNet 3.0 with `apt-get install wordnet-base` (Debian/Ubuntu) or "
           "`python -m nltk.downloader wordnet`, or pass its directory (the one holding data.noun) "
           f"via --wordnet / ${ENV_VAR}")


def _cache_root():
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "zsl_jax" / "nltk_data"


def _is_wordnet_dir(path):
  return path is not None and all((pathlib.Path(path) / f).is_file() for f in _REQUIRED)


def _private_copy(src):
  """Copies a lexnames-less (Debian) WordNet directory into an nltk data root we own."""
  dst = _cache_root() / "corpora" / "wordnet"
  marker = dst / ".zsl_jax_source"
  if marker.is_file() and marker.read_text() == str(src) and _is_wordnet_dir(dst):
    return dst
  tmp = dst.with_name(f"wordnet.tmp{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  for f in sorted(pathlib.Path(src).iterdir()):
    if f.is_file():
      shutil.copyfile(f, tmp / f.name)  # Copies, never symlinks: nltk refuses links out of a root.
  shutil.copyfile(_LEXNAMES, tmp / "lexnames")
  (tmp / ".zsl_jax_source").write_text(str(src))
  shutil.rmtree(dst, ignore_errors=True)
  try:
    os.replace(tmp, dst)
  except OSError:  # Another process (host sharing $HOME) finished its copy first: use that one.
    shutil.rmtree(tmp, ignore_errors=True)
    if not ((dst / "lexnames").is_file() and _is_wordnet_dir(dst)):
      raise
  return dst


def _nltk_wordnet():
  """nltk's own `corpora/wordnet` (directory or zip) if the downloader installed it."""
  import nltk  # pylint: disable=import-outside-toplevel
  try:
    return nltk.data.find("corpora/wordnet")
  except LookupError:
    pass
  try:
    return nltk.data.find("corpora/wordnet.zip/wordnet/")
  except LookupError:
    return None


def find_wordnet(path=None):
  """Returns what to open: a directory path or an nltk path pointer. Raises UserError if none."""
  if path is not None:
    if not _is_wordnet_dir(path):
      raise UserError(f"WordNet directory {path} does not hold {', '.join(_REQUIRED[:2])}, ...; {_REMEDY}")
    return pathlib.Path(path).resolve()
  env = os.environ.get(ENV_VAR)
  if env:
    if not _is_wordnet_dir(env):
      raise UserError(f"${ENV_VAR}={env} is not a WordNet directory (no data.noun/index.noun); {_REMEDY}")
    return pathlib.Path(env).resolve()
  found = _nltk_wordnet()
  if found is not None:
    return found
  if _is_wordnet_dir(DEBIAN_DIR):
    return pathlib.Path(DEBIAN_DIR)
  raise UserError(f"WordNet 3.0 not found (looked at ${ENV_VAR}, nltk's data path and {DEBIAN_DIR}); {_REMEDY}")


def _reader_class():
  from nltk.corpus.reader.wordnet import WordNetCorpusReader  # pylint: disable=import-outside-toplevel

  class _EnglishReader(WordNetCorpusReader):
    """Skips the multilingual `map_wn` step, which insists on finding 'wordnet' by name."""

    def map_wn(self, version="wordnet"):  # pylint: disable=unused-argument
      return None

  return _EnglishReader


_READERS = {}  # str(source) -> reader: loading takes seconds, so once per process.


def _load(source):
  key = str(source)
  if key not in _READERS:
    _READERS[key] = _open(source)
  return _READERS[key]


def _open(source):
  import nltk  # pylint: disable=import-outside-toplevel
  if isinstance(source, pathlib.Path):
    try:
      root = source if (source / "lexnames").is_file() else _private_copy(source)
    except OSError as e:
      raise UserError(f"cannot copy WordNet from {source} into {_cache_root()} ({e}); make ~/.cache writable "
                      "(or set XDG_CACHE_HOME), or point $ZSL_JAX_WORDNET at an nltk-style wordnet directory") from e
    if str(root) not in nltk.data.path:  # nltk 3.10's sandbox: the corpus root must be on its path.
      nltk.data.path.insert(0, str(root))
    source = str(root)
  try:
    with warnings.catch_warnings():  # "multilingual functions are not available": English is all we need.
      warnings.simplefilter("ignore", UserWarning)
      reader = _reader_class()(source, None)
  except (OSError, PermissionError, ValueError, LookupError) as e:
    raise UserError(f"cannot read WordNet at {source} ({type(e).__name__}: {e}); {_REMEDY}") from e
  if reader.get_version() != "3.0":
    raise UserError(f"WordNet at {source} is version {reader.get_version()}, but ImageNet WNIDs are WordNet 3.0 "
                    f"offsets; {_REMEDY}")
  return reader


def load_wordnet(path=None):
  """WordNet 3.0 as an nltk `WordNetCorpusReader`, cached per process (loading takes seconds).

  Search order: `path`, $ZSL_JAX_WORDNET, nltk's data paths (`corpora/wordnet`), /usr/share/wordnet.
  """
  return _load(find_wordnet(path))


def synset(wn, wnid):
  """`n02084071` -> Synset('dog.n.01'); UserError for ids that are not WordNet 3.0 nouns."""
  if len(wnid) != 9 or wnid[0] != "n" or not wnid[1:].isdigit():
    raise UserError(f"{wnid!r} is not an ImageNet WNID (expected 'n' + 8 digits); fix the class list")
  try:
    with warnings.catch_warnings():  # nltk warns and returns None for an unknown offset.
      warnings.simplefilter("ignore", UserWarning)
      s = wn.synset_from_pos_and_offset("n", int(wnid[1:]))
  except Exception as e:  # Older nltk raises WordNetError (or ValueError) instead.
    raise UserError(f"{wnid} is not a WordNet 3.0 noun synset; check the class list is ImageNet's") from e
  if s is None:
    raise UserError(f"{wnid} is not a WordNet 3.0 noun synset; check the class list is ImageNet's")
  return s


def wnid_of(s):
  """Synset -> WNID string."""
  return f"n{s.offset():08d}"


def class_name(wn, wnid):
  """The reference's class name: synset name before the first '.', underscores to spaces."""
  return synset(wn, wnid).name().split(".")[0].replace("_", " ")
