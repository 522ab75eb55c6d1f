"""HGR-Net's hierarchical contrastive ("OM") loss, batched into one text-tower call per step.

The reference loops over outer anchors a_k (the label and its first ancestors) and, for each,
over inner levels p_m of a_k's path; every (k, m) pair is a contrast between the image batch and
a_k's prompt plus up to 256 negatives sampled around depth(p_m), re-running the text tower each
time. Here the host samples every contrast of a step at once (`negatives.ContrastSampler`),
the trainer encodes the unique prompts once, and `om_loss` scores all contrasts as one
[G, B, C] tensor with masks. The sum of weighted, masked cross-entropies is the reference's loss.

Conventions: a class path P(a) is root side first and includes a (`paths[a]`, -1 padded), so
P(a)[d] is a's ancestor at depth d. In a contrast row, column 0 is the positive (the outer anchor).
"""

import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax.errors import UserError

SCHEMES = ("equal", "increasing", "decreasing", "nl_increasing", "nl_decreasing", "adaptive",
           "adaptive_frozen", "inverse_count")  # hgr.level_weights
INDEX_BY = ("depth", "loop_position")  # hgr.index_by: what indexes the adaptive θ
WEIGHTINGS = ("both", "in", "out")     # hgr.weighting: which loops the scheme weights (the other is equal)
_MASKED = -1e9


# --------------------------------------------------------------------------- level weights
def loop_weights(scheme, depths, theta=None, level_counts=None, index_by="depth"):
  """Weights of one loop's positions (the official `tree_model.get_weights`); `depths` int [..., n_max], -1 padded.

  Position i = 0 is the first level of the loop (the finest in OM's loops). `adaptive` is
  softmax_i(100 ** theta[idx_i]) with idx = the level's depth (zsl_jax) or its loop position
  (`index_by="loop_position"`, the reference); `inverse_count` is (1/N_d) / sum(1/N_d').
  """
  mask = depths >= 0
  dtype = jnp.result_type(float)  # float64 under jax.enable_x64 (reference checks), else float32.
  maskf = mask.astype(dtype)
  pos = jnp.arange(depths.shape[-1], dtype=dtype)
  n = maskf.sum(-1, keepdims=True)
  if scheme == "equal":
    raw = jnp.ones_like(maskf)
  elif scheme == "increasing":
    raw = pos + 1
  elif scheme == "decreasing":
    raw = n - pos
  elif scheme == "nl_increasing":
    raw = (pos + 1) ** 3
  elif scheme == "nl_decreasing":
    raw = (n - pos) ** 3
  elif scheme in ("adaptive", "adaptive_frozen"):
    if index_by not in INDEX_BY:
      raise UserError(f"hgr.index_by={index_by!r} is not one of: {', '.join(INDEX_BY)}")
    idx = jnp.maximum(depths, 0) if index_by == "depth" else jnp.broadcast_to(
        jnp.arange(depths.shape[-1]), depths.shape)
    th = theta if scheme == "adaptive" else jax.lax.stop_gradient(theta)
    logits = jnp.where(mask, 100.0 ** th[idx], -jnp.inf)
    return jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)
  elif scheme == "inverse_count":
    raw = 1.0 / jnp.asarray(level_counts, dtype)[jnp.maximum(depths, 0)]
  else:
    raise UserError(f"hgr.level_weights={scheme!r} is not one of: {', '.join(SCHEMES)}")
  raw = jnp.broadcast_to(raw, maskf.shape) * maskf
  return raw / jnp.maximum(raw.sum(-1, keepdims=True), 1e-30)


def init_theta(level_counts, scale=1.0):
  """Adaptive-weight logits θ_d = scale / N_d (near-uniform start, as the reference)."""
  counts = np.maximum(np.asarray(level_counts, np.float32), 1.0)
  return jnp.asarray(scale / counts, jnp.float32)


def slot_of(n, num_slots):
  """[n] slot of each of n rows split into `num_slots` equal consecutive groups (images or contrasts)."""
  return jnp.arange(n) // (n // num_slots)


def contrast_weights(scheme, contrasts, theta=None, level_counts=None, weighting="both", index_by="depth"):
  """w_out[k] * w_in[k, m] / P for every contrast [G]; `weighting` in|out makes the other loop equal.

  A step of P class slots (depths [P, K] and [P, K, M]; contrasts in P equal groups, slot by slot,
  as `ContrastSampler.sample_step` writes them) weights each slot's contrasts by its own class's
  loops, divided by P: the loss is the mean over the step's classes.
  """
  if weighting not in WEIGHTINGS:
    raise UserError(f"hgr.weighting={weighting!r} is not one of: {', '.join(WEIGHTINGS)}")
  out_scheme = scheme if weighting in ("both", "out") else "equal"
  in_scheme = scheme if weighting in ("both", "in") else "equal"
  k_max, m_max = contrasts["inner_depths"].shape[-2:]
  outer = jnp.reshape(contrasts["outer_depths"], (-1, k_max))                                 # [P, K]
  inner = jnp.reshape(contrasts["inner_depths"], (-1, k_max, m_max))                          # [P, K, M]
  k, m = contrasts["k_index"], contrasts["m_index"]
  slot = slot_of(k.shape[0], outer.shape[0])                                                 # [G]
  w_out = loop_weights(out_scheme, outer, theta, level_counts, index_by)                      # [P, K]
  w_in = loop_weights(in_scheme, inner, theta, level_counts, index_by)                        # [P, K, M]
  w = w_out[slot, k] * w_in[slot, k, m] / outer.shape[0]
  return jnp.where(contrasts["group_mask"], w, 0.0)


# --------------------------------------------------------------------------- the loss
def om_loss(image_features, prompt_features, columns, weights, logit_scale, example_mask=None, num_slots=1):
  """Sum over contrasts of weight * mean-over-images cross-entropy with the positive in column 0.

  Args:
    image_features: [B, D] L2-normalised.
    prompt_features: [U, D] L2-normalised embeddings of the step's unique prompts.
    columns: int32 [G, C] index into prompt_features, -1 = padding.
    weights: [G] contrast weights (0 for padding contrasts).
    logit_scale: log of the temperature multiplier (CLIP's parameter), scalar.
    example_mask: bool [B] real images of a padded batch.
    num_slots: P, the batch's class-pure slots of B / P images each; the contrasts come in P equal
      groups in slot order (`ContrastSampler.sample_step`), and a group scores only its slot's images.
  Returns:
    (loss, per-contrast mean cross-entropy [G]).
  """
  valid = columns >= 0                                                   # [G, C]
  text = prompt_features[jnp.maximum(columns, 0)]                        # [G, C, D]
  logits = jnp.exp(logit_scale) * jnp.einsum("bd,gcd->gbc", image_features, text)  # [G, B, C]
  # A finite fill (not -inf) keeps all-padding rows free of NaN values and NaN gradients.
  logits = jnp.where(valid[:, None, :], logits, _MASKED)
  ce = jax.nn.logsumexp(logits, axis=-1) - logits[..., 0]                # [G, B]
  g, b = ce.shape
  m = jnp.ones((b,), ce.dtype) if example_mask is None else example_mask.astype(ce.dtype)  # [B]
  if num_slots == 1:
    per_contrast = (ce * m).sum(-1) / jnp.maximum(m.sum(), 1.0)
  else:
    # Every contrast is scored against every image, then masked to its slot's (P x the work of scoring
    # each group against its own B / P images; kept so, since that reorders sums and moves the demo's figures).
    m = m * (slot_of(b, num_slots)[None, :] == slot_of(g, num_slots)[:, None])  # [G, B]
    per_contrast = (ce * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)
  per_contrast = jnp.where(weights > 0, per_contrast, 0.0)
  return jnp.sum(weights * per_contrast), per_contrast
