"""`python -m tests.faults FAULT <zsl_jax.main arguments>`: the real command with one injected fault (tests only).

FAULT:
  enospc_at=N  Orbax's writer fails with ENOSPC while writing checkpoint N (in its background
               thread when saves are asynchronous), where a full disk makes it fail.
"""
import errno
import os
import sys

from orbax.checkpoint._src.path import async_path

from zsl_jax import main as zsl_main


def _enospc_at(step):
  original = async_path.write_text
  marker = f"{os.sep}{step}.orbax-checkpoint-tmp"

  async def write_text(path, text):
    if marker in str(path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return await original(path, text)

  async_path.write_text = write_text


def run():
  fault = sys.argv.pop(1)
  name, _, value = fault.partition("=")
  if name != "enospc_at":
    raise SystemExit(f"unknown fault {fault!r}")
  _enospc_at(int(value))
  zsl_main.run()


if __name__ == "__main__":
  run()
