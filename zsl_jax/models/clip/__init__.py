"""CLIP (OpenAI architecture) in Flax: presets, towers, torch conversion, converted-folder io.

`from zsl_jax.models import clip; clip.load("weights/RN50")` is the user-facing entry point.
"""
from zsl_jax.models.clip.io import LoadedCLIP, load, load_converted, save_converted
from zsl_jax.models.clip.model import (CLIP, CLIPConfig, CONFIG_FILE, PRESETS, VARIABLES_DIR, abstract_variables,
                                       config_from_state_dict, count_params, encode_prompts_in_chunks, get_config,
                                       init_variables, preset_name)
