"""CLIP text side: BPE tokenisation and prompt templates."""
from zsl_jax.text.templates import HGR_TEMPLATE
from zsl_jax.text.templates import OPENAI_IMAGENET_TEMPLATES
from zsl_jax.text.tokenizer import clean_text
from zsl_jax.text.tokenizer import ClipTokenizer
from zsl_jax.text.tokenizer import get_tokenizer
from zsl_jax.text.tokenizer import tokenize
from zsl_jax.text.tokenizer import truncate_tokens
