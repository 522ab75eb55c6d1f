"""MATLAB `.mat` helpers shared by the xlsa17 readers and the attribute-name reader.

scipy loads MATLAB cell arrays of strings as nested object arrays and indices as 1-based
columns; these helpers turn them into Python strings and 0-based vectors, and every unreadable
file into one `UserError` line.
"""
import os

import numpy as np
import scipy.io

from zsl_jax.errors import UserError


def cellstr(cell):
  """MATLAB cell array of strings (as scipy loads it) -> list of Python str."""
  out = []
  for item in np.asarray(cell, dtype=object).ravel():
    while isinstance(item, np.ndarray):
      item = item.ravel()[0] if item.size else ""
    out.append(str(item))
  return out


def loadmat(path, what, fix, variable_names=None):
  """scipy.io.loadmat with one error line per failure; `fix` says what to pass instead when absent."""
  if not os.path.isfile(path):
    raise UserError(f"{what} not found at {path}; {fix}")
  try:
    return scipy.io.loadmat(path, variable_names=variable_names)
  except NotImplementedError as e:  # MATLAB v7.3 files are hdf5, which scipy does not read.
    raise UserError(f"{path} is a MATLAB v7.3 file; re-save it in MATLAB with save(..., '-v7')") from e
  except (ValueError, TypeError, OSError) as e:
    raise UserError(f"{path} is not a readable MATLAB .mat file ({e}); re-download the {what}") from e


def require(mat, keys, path, what):
  """UserError naming the keys of `keys` that `mat` lacks."""
  missing = [k for k in keys if k not in mat]
  if missing:
    raise UserError(f"{path} lacks {', '.join(missing)}; it is not an {what} "
                    f"(expected keys {', '.join(keys)})")


def zero_based(mat, key):
  """1-based MATLAB index column -> 0-based int64 vector."""
  v = np.asarray(mat[key]).astype(np.int64).ravel() - 1
  if v.size and v.min() < 0:
    raise UserError(f"{key} holds index 0; xlsa17 indices are 1-based MATLAB indices")
  return v
