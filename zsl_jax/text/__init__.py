"""CLIP text side: BPE tokenisation and prompt templates."""
from zsl_jax.text.tokenizer import ClipTokenizer, clean_text, get_tokenizer, tokenize, truncate_tokens
from zsl_jax.text.templates import OPENAI_IMAGENET_TEMPLATES, HGR_TEMPLATE
