"""CLIP (OpenAI architecture) in Flax: presets, towers, torch conversion, converted-folder io.

`from zsl_jax.models import clip; clip.load("weights/RN50")` is the user-facing entry point.
"""
from zsl_jax.models.clip.io import load
from zsl_jax.models.clip.io import load_converted
from zsl_jax.models.clip.io import LoadedCLIP
from zsl_jax.models.clip.io import save_converted
from zsl_jax.models.clip.model import abstract_variables
from zsl_jax.models.clip.model import CLIP
from zsl_jax.models.clip.model import CLIPConfig
from zsl_jax.models.clip.model import CONFIG_FILE
from zsl_jax.models.clip.model import config_from_state_dict
from zsl_jax.models.clip.model import count_params
from zsl_jax.models.clip.model import encode_prompts_in_chunks
from zsl_jax.models.clip.model import get_config
from zsl_jax.models.clip.model import init_variables
from zsl_jax.models.clip.model import preset_name
from zsl_jax.models.clip.model import PRESETS
from zsl_jax.models.clip.model import VARIABLES_DIR
