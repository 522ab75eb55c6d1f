"""Test-wide setup: 8 simulated CPU devices, parsed absl flags, shared reference-data paths.

XLA_FLAGS must be set before jax is imported anywhere, hence at the top of conftest.
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# grain's multiprocessing reads absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()

# CPU tests are compile-bound; a persistent cache makes re-runs and subprocess runs cheap.
_CACHE = os.environ.get("ZSL_JAX_TEST_COMPILATION_CACHE", str(pathlib.Path.home() / ".cache" / "zsl_jax_test_xla"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def shared_data():
  """Path to ../shared/data; tests needing the real reference files skip when it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"reference data folder {SHARED_DATA} is absent (clone with ../shared beside the repo)")
  return SHARED_DATA
