"""Hierarchical zero-shot evaluation suite: consistency metrics, training-free hierarchy baselines, comparison.

consistency.py  HCA and MTA (ProTeCt), mistake severity (Making Better Mistakes): definitions and device counts
variants.py     inference variants over the hierarchy: plain, prompt ensemble, CHiLS, Hierarchy-CLIP
plots.py        per-depth accuracy plots (one line per variant)
compare.py      `python -m zsl_jax.tools.compare_zero_shot`: every variant on one protocol, one table
"""
