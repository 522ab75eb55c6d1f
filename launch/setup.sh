#!/usr/bin/env bash
# Sets up a fresh machine for zsl_jax: WordNet 3.0 offline, then the package (editable).
#
#   bash launch/setup.sh            # the package (runs the demos, trains, evaluates)
#   bash launch/setup.sh --test     # + the torch reference stack, networkx and pytest (parity tests, benchmarks)
#   bash launch/setup.sh --cuda     # + jax with CUDA 12 (GPU machines);  --tpu for TPU VMs
#
# Safe to re-run: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=()
for arg in "$@"; do
  case "$arg" in
    --test) extras+=(test torch) ;;
    --cuda) extras+=(cuda) ;;
    --tpu) extras+=(tpu) ;;
    *) echo "$0: unknown option $arg (use --test, --cuda, --tpu)" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}

# WordNet 3.0 (ImageNet WNIDs are its noun offsets). Debian/Ubuntu ship it as wordnet-base;
# zsl_jax reads /usr/share/wordnet directly. Elsewhere nltk's downloader fetches it.
if [[ ! -f /usr/share/wordnet/data.noun ]]; then
  sudo=""
  if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then sudo="sudo -n"; fi
  if command -v apt-get >/dev/null && { [[ $(id -u) -eq 0 ]] || $sudo true 2>/dev/null; }; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wordnet-base
  else
    echo "apt-get not usable: fetching WordNet with nltk's downloader into ~/nltk_data" >&2
    "$python" -m pip install -q "nltk>=3.8.1"
    "$python" -m nltk.downloader -q -d "$HOME/nltk_data" wordnet
  fi
fi

if [[ " ${extras[*]-} " == *" torch "* ]]; then
  # The reference implementations for parity tests. A CPU torch wheel is enough; the version
  # pair below is the one the parity tests were written against (torchvision needs a matching torch).
  "$python" -m pip install -q "${ZSL_JAX_TORCH:-torch==2.13.0}" "${ZSL_JAX_TORCHVISION:-torchvision==0.28.0}"
fi

spec="."
if [[ ${#extras[@]} -gt 0 ]]; then
  spec=".[$(IFS=,; echo "${extras[*]}")]"
fi
"$python" -m pip install -q -e "$spec"
"$python" -c "import zsl_jax, jax; print('zsl_jax', zsl_jax.__version__, 'on jax', jax.__version__, jax.devices())"
