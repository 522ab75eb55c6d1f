"""The dense attribute attention DAZLE and VSMR share (the forward of each official `DAZLE.py`).

Each attribute i has a semantic vector v_i (row of V [I, D]) and the learned maps W_m [D, F] turn
it into a visual query v_i W_m. Attention over regions uses W_2, the attribute weights use W_3;
DAZLE adds W_1 for its attribute scores. VSMR restricts everything to the attributes an image is
believed to have (a mask [B, I]); DAZLE attends to all of them.

Why it is cheap: every quantity the methods need is a region score s[b, r, i, m] = <v_i W_m, x_br>
pooled over the regions. By linearity the official attended features F_p = Σ_r α x [B, I, F]
followed by W_1 or W_3 equal Σ_r α s_m, so one GEMM over the N = B·R regions ([N, F] x [F, I·M])
gives the attention logits and the attribute scores together, its gradient is one more, and no
[B, I, F] tensor is formed in training (`attribute_features` forms it only for outputs that ask).
The normalised regions x / |x| are never written either: the per-region scale multiplies the
scores. Contraction order, chosen at trace time from the shapes: the queries V W [I, F] first
(I·D·F + N·F·I multiply-adds per map), or every region projected to D first (N·F·D + N·D·I). The
second has more layout passes, so it is taken only below REGIONS_FIRST_SHARE of the first's
multiply-adds: measured through the DAZLE step on this CPU (batch 50, 1 thread), CUB's 312
attributes ran 1.3x slower regions-first at 0.99 of the multiply-adds, 600 attributes 1.2x faster
at 0.58. AWA2 (85), SUN (102) and CUB (312) form the queries first at 8 images a batch or more.

Parameters are created on the calling module (so both models keep their parameter names and
checkpoints), in the order given: the init RNG follows creation order.
"""
import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST
ABSENT_LOGIT = -1000.0  # logit of a masked-out attribute: softmax and sigmoid both send it to ~0
REGIONS_FIRST_SHARE = 0.6  # project the regions first only below this share of the multiply-adds


def l2_normalize(x, axis=-1, eps=1e-12):
  """torch.nn.functional.normalize: x / max(||x||, eps)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def attribute_maps(module, inits, *, num_attributes, w2v_dim, feature_dim, normalize_V, trainable_w2v):
  """Creates `V` [I, D] and one [D, F] map per (name, initializer) of `inits` on `module`.

  Returns:
    (Vn [I, D], [W_m [D, F] in the order of `inits`]) with Vn = V, row-normalised when `normalize_V`.
  """
  V = module.param("V", jax.nn.initializers.normal(1.0), (num_attributes, w2v_dim))
  if not trainable_w2v:
    V = jax.lax.stop_gradient(V)
  maps = [module.param(name, init, (w2v_dim, feature_dim)) for name, init in inits]
  return (l2_normalize(V) if normalize_V else V), maps


def region_scale(features, normalize_F):
  """(x [B, R, F] float32, scale [B, R]): x · scale is the official F, normalised when `normalize_F`."""
  x = features.astype(jnp.float32)
  if not normalize_F:
    return x, jnp.ones(x.shape[:2], jnp.float32)
  return x, 1.0 / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x), axis=-1)), 1e-12)


def queries_first(num_regions, num_attributes, w2v_dim, feature_dim):
  """Whether to form V W [I, F] first rather than project every region to D (module docstring)."""
  n, i, d, f = num_regions, num_attributes, w2v_dim, feature_dim
  return n * f * d + n * d * i >= REGIONS_FIRST_SHARE * (i * d * f + n * f * i)


def region_scores(Vn, maps, x, scale):
  """s [B, R, I, M] with s[b, r, i, m] = <Vn_i W_m, x_br> · scale_br: every region against every query.

  One GEMM over all regions and maps, in the cheaper order for these shapes (module docstring).
  """
  b, r, f = x.shape
  i, d = Vn.shape
  if queries_first(b * r, i, d, f):
    q = jnp.stack([jnp.dot(Vn, w, precision=HIGHEST) for w in maps], axis=1)  # [I, M, F]
    s = jnp.einsum("brf,imf->brim", x, q, precision=HIGHEST)
  else:
    y = jnp.einsum("brf,kf->brk", x, jnp.concatenate(maps), precision=HIGHEST)  # [B, R, M·D]
    s = jnp.einsum("brmd,id->brim", y.reshape(b, r, len(maps), d), Vn, precision=HIGHEST)
  return s * scale[:, :, None, None]


def attend(logits, mask=None):
  """Attention α [B, R, I] of every attribute over the regions from logits [B, R, I].

  mask: optional bool [B, I]; absent attributes get ABSENT_LOGIT before the softmax (an explicit
  mask instead of the VSMR reference's exact-zero test) and a zero map.
  """
  if mask is not None:
    logits = jnp.where(mask[:, None, :], logits, ABSENT_LOGIT)
  attention = jax.nn.softmax(logits, axis=1)
  return attention * mask[:, None, :] if mask is not None else attention


def pool(weights, scores):
  """Σ_r weights · scores [B, I] of two [B, R, I] tensors: a query pooled over the attended regions."""
  return jnp.sum(weights * scores, axis=1)


def attribute_weights(logits, mask=None):
  """sigmoid of the pooled W_3 scores [B, I]; ~0 for masked-out attributes."""
  if mask is not None:
    logits = jnp.where(mask, logits, ABSENT_LOGIT)
  return jax.nn.sigmoid(logits)


def attribute_features(attention, x, scale):
  """h [B, I, F] = Σ_r α x / |x| (the official F_p) for the outputs; the losses never need it."""
  return jnp.einsum("bri,brf->bif", attention * scale[:, :, None], x, precision=HIGHEST)
