"""DAZLE losses (the official `core/DAZLE.py`): cross-entropy without the margin + λ · self-calibration.

Kept apart from the model so the same functions score official-checkpoint outputs in the torch
parity test and the trainer's batches. Class positions are those of the scored universe; `unseen`
is a boolean [K] mask of the classes that get the +bias margin.
"""
import jax
import jax.numpy as jnp

from zsl_jax.errors import UserError

LOSS_TYPES = ("CE", "rank")  # loss.type: cross-entropy, or the hinge ranking variant
CE_OVER = ("all", "seen")    # loss.ce_over: the classes the main term normalises over


def cross_entropy(scores_raw, labels, seen, over="all"):
  """mean_b -log softmax(s_raw[b])[y_b]; `over='all'` (the notebooks' is_conservative) or 'seen'."""
  if over == "seen":
    scores_raw = jnp.where(seen[None, :], scores_raw, -jnp.inf)
  logp = jax.nn.log_softmax(scores_raw, axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()


def self_calibration(scores, unseen):
  """-log(mean_b Σ_{u unseen} softmax(s[b])[u]): the log of the batch mean, with the margin."""
  p = jax.nn.softmax(scores, axis=-1)
  mass = jnp.sum(jnp.where(unseen[None, :], p, 0.0), axis=-1)  # [B]
  return -jnp.log(mass.mean())


def ranking(scores, labels, seen, over="all"):
  """Hinge ranking variant (`loss_type='rank'`): mean over b, k of max(0, 1 - (s[b, y_b] - s[b, k])).

  Scores include the margin; the k = y_b term contributes the constant 1 as in the reference.
  """
  s_y = jnp.take_along_axis(scores, labels[:, None], axis=-1)
  hinge = jax.nn.relu(1.0 - (s_y - scores))  # [B, K]
  if over == "seen":
    return jnp.sum(jnp.where(seen[None, :], hinge, 0.0)) / (hinge.shape[0] * jnp.sum(seen))
  return hinge.mean()


def dazle_loss(outputs, labels, unseen, *, lam=0.1, loss_type="CE", ce_over="all"):
  """Total loss and its parts; `outputs` as returned by `zsl_jax.projects.attr.models.dazle.DAZLE`."""
  if ce_over not in CE_OVER:
    raise UserError(f"loss.ce_over={ce_over!r} is not one of: {', '.join(CE_OVER)}")
  unseen = jnp.asarray(unseen, bool)
  seen = ~unseen
  if loss_type == "CE":
    main = cross_entropy(outputs["scores_raw"], labels, seen, ce_over)
  elif loss_type == "rank":
    main = ranking(outputs["scores"], labels, seen, ce_over)
  else:
    raise UserError(f"loss.type={loss_type!r} is not one of: {', '.join(LOSS_TYPES)}")
  cal = self_calibration(outputs["scores"], unseen) if lam else jnp.zeros(())
  total = main + lam * cal
  return total, {"loss_main": main, "loss_cal": cal}
