"""The dense attribute attention DAZLE and VSMR share (the forward of each official `DAZLE.py`).

Each attribute i has a semantic vector v_i (row of V [I, D]) and the learned maps W_j [D, F] turn
it into a visual query v_i W_j [I, F]. Attention over regions uses W_2, the attribute weights use
W_3; DAZLE adds W_1 for its attribute scores. VSMR restricts everything to the attributes an image
is believed to have (a mask [B, I]); DAZLE attends to all of them.

Parameters are created on the calling module (so both models keep their parameter names and
checkpoints), in the order given: the init RNG follows creation order.
"""
import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST
ABSENT_LOGIT = -1000.0  # logit of a masked-out attribute: softmax and sigmoid both send it to ~0


def l2_normalize(x, axis=-1, eps=1e-12):
  """torch.nn.functional.normalize: x / max(||x||, eps)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def attribute_queries(module, inits, *, num_attributes, w2v_dim, feature_dim, normalize_V, trainable_w2v):
  """Creates `V` [I, D] and one [D, F] map per (name, initializer) of `inits` on `module`.

  Returns:
    (Vn [I, D], {name: Vn @ W_name [I, F]}) with Vn = V, row-normalised when `normalize_V`.
  """
  V = module.param("V", jax.nn.initializers.normal(1.0), (num_attributes, w2v_dim))
  if not trainable_w2v:
    V = jax.lax.stop_gradient(V)
  maps = {name: module.param(name, init, (w2v_dim, feature_dim)) for name, init in inits}
  Vn = l2_normalize(V) if normalize_V else V
  return Vn, {name: jnp.dot(Vn, W, precision=HIGHEST) for name, W in maps.items()}


def region_features(features, normalize_F):
  """[B, R, F] as float32, each region L2-normalised over its F channels when `normalize_F`."""
  x = features.astype(jnp.float32)
  return l2_normalize(x, axis=-1) if normalize_F else x


def attend(queries, x, mask=None):
  """Attention of every attribute over the regions and the feature it attends to.

  Args:
    queries: [I, F] (V W_2), scored against every region of x.
    x: region features [B, R, F].
    mask: optional bool [B, I]; absent attributes get ABSENT_LOGIT before the softmax (an explicit
      mask instead of the VSMR reference's exact-zero test), a zero map and a zero feature.
  Returns:
    (attention [B, I, R], attribute features h [B, I, F]).
  """
  logits = jnp.einsum("if,brf->bir", queries, x, precision=HIGHEST)  # [B, I, R]
  if mask is not None:
    logits = jnp.where(mask[:, :, None], logits, ABSENT_LOGIT)
  attention = jax.nn.softmax(logits, axis=-1)
  if mask is not None:
    attention = attention * mask[:, :, None]
  return attention, jnp.einsum("bir,brf->bif", attention, x, precision=HIGHEST)


def attribute_weights(queries, h, mask=None):
  """sigmoid(V W_3 . h_i) [B, I] from queries [I, F] and h [B, I, F]; ~0 for masked-out attributes.

  Separate from `attend` so that DAZLE traces it after its attribute scores, as it always did: the
  order of the two uses of h sets the order of its gradient sums, which the bit-exact checks see.
  """
  logits = jnp.einsum("if,bif->bi", queries, h, precision=HIGHEST)
  if mask is not None:
    logits = jnp.where(mask, logits, ABSENT_LOGIT)
  return jax.nn.sigmoid(logits)
