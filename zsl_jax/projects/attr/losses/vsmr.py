"""VSMR losses (Zhang et al., JEI 2024, and its code release): in-batch prototype losses (L_PS, L_PP),
semantic autoencoder (L_AP, L_ED), attribute BCE.

Class positions index a fixed universe of K classes so shapes stay static under jit; classes
absent from a batch are masked out of every sum.
"""
import jax
import jax.numpy as jnp


def cosine(a, b):
  """Pairwise cosine [N, M] of rows normalised one by one; a zero row (an absent class) gives 0.

  torch's cosine_similarity divides by max(|a||b|, 1e-8), which lets an image vector shrink towards
  zero and turn the ratio L_PS into a ratio of unnormalised dot products; normalising each row
  (norm sqrt(Σx² + 1e-30), whose gradient is finite at 0) keeps every loss scale-invariant.
  """
  an = a / jnp.sqrt(jnp.sum(jnp.square(a), axis=-1, keepdims=True) + 1e-30)
  bn = b / jnp.sqrt(jnp.sum(jnp.square(b), axis=-1, keepdims=True) + 1e-30)
  return an @ bn.T


def batch_prototypes(embedding, labels, num_classes):
  """Per-class means of the batch's image vectors ([K, F]) and which classes are present ([K])."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=embedding.dtype)  # [B, K]
  counts = onehot.sum(0)
  protos = (onehot.T @ embedding) / jnp.maximum(counts, 1.0)[:, None]
  return protos, counts > 0


def prototype_losses(embedding, labels, num_classes):
  """(L_PS, L_PP, prototypes, present): gradients flow through the in-batch prototypes.

  L_PS = (Σ_b Σ_c C[b, c] - Σ_b C[b, y_b]) / Σ_b C[b, y_b] over present classes c;
  L_PP = (Σ_{i,j} P[i, j] - trace P) / (2 C_b) over the C_b present classes.
  """
  protos, present = batch_prototypes(embedding, labels, num_classes)
  c = cosine(embedding, protos)  # [B, K]
  own = jnp.take_along_axis(c, labels[:, None], axis=-1).sum()
  l_ps = (jnp.sum(jnp.where(present[None, :], c, 0.0)) - own) / own
  p = cosine(protos, protos)
  pair = present[:, None] & present[None, :]
  n = jnp.sum(present)
  l_pp = (jnp.sum(jnp.where(pair, p, 0.0)) - jnp.sum(jnp.where(present, jnp.diagonal(p), 0.0))) / (2.0 * n)
  return l_ps, l_pp, protos, present


def semantic_losses(encoded, reconstructed, class_att, targets, present, seen, normalize_targets=True):
  """L_AP = MSE(P_c, E(a_c)) over classes present in the batch (targets are stop-gradient batch
  prototypes); L_ED = MSE(a_c, D(E(a_c))) over the seen classes.

  `normalize_targets` regresses prototypes rescaled to unit RMS per dimension (norm sqrt(F)): only
  their direction is used (cosine classification), and the raw image vectors' norm drifts freely
  under the scale-invariant L_PS / L_PP (to ~0.02 on the demo), where an MSE on raw prototypes is
  ~1e-8 and E learns no direction. Unit RMS (rather than unit norm, whose MSE is ~1/F) keeps L_AP
  the leading term of 0.1·L_AP + L_ED, as it is with the reference's ResNet-scale prototypes.
  """
  targets = jax.lax.stop_gradient(targets)
  if normalize_targets:
    rms = jnp.sqrt(jnp.mean(jnp.square(targets), axis=-1, keepdims=True) + 1e-30)
    targets = targets / rms
  ap = jnp.mean(jnp.square(encoded - targets), axis=-1)
  l_ap = jnp.sum(jnp.where(present, ap, 0.0)) / jnp.maximum(jnp.sum(present), 1)
  ed = jnp.mean(jnp.square(reconstructed - class_att), axis=-1)
  l_ed = jnp.sum(jnp.where(seen, ed, 0.0)) / jnp.maximum(jnp.sum(seen), 1)
  return l_ap, l_ed


def attribute_bce(logits, targets):
  """BCE-with-logits against the binarised class attributes, mean over images and attributes."""
  t = targets.astype(jnp.float32)
  return jnp.mean(jnp.maximum(logits, 0) - logits * t + jnp.log1p(jnp.exp(-jnp.abs(logits))))
