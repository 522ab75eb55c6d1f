"""DAZLE (Huynh & Elhamifar, CVPR 2020): dense attribute attention over frozen region features.

The module is class-agnostic: its parameters (attribute vectors V and the projections W_1, W_2,
W_3) never depend on the class set. Class attributes Z [K, I] and the fixed ±bias calibration
margin [K] are inputs, so one trained model scores any universe of classes — the training
classes with validation classes as pseudo-unseen during model selection, all classes at test.
When they are not passed, the `constants` collection (written at init, or by
`from_torch_state_dict`) supplies them, so `module.apply(variables, features)` matches the
official model's `S_pp`.

Equations follow the official `core/DAZLE.py` forward on the path the official notebooks take, plus
the constructor options they use: normalize_V / normalize_F, the ±1 margin (`is_bias`), uniform
attention ablations (`uniform_att_1`: α ≡ 1/R, `uniform_att_2`: β ≡ 1), `is_sigmoid` (sigmoid of the
per-region attribute scores) and `non_linear_act` (ReLU of the pooled attribute scores).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax.errors import UserError
from zsl_jax.projects.attr.models import attention

W2V_DIM = 300


def margin_vector(is_unseen, bias=1.0):
  """+bias on unseen classes, -bias on seen ones ([K] float32)."""
  return np.where(np.asarray(is_unseen, bool), float(bias), -float(bias)).astype(np.float32)


class DAZLE(nn.Module):
  """Region features [B, R, F] -> scores [B, K] (margin included), attention maps and more."""
  num_attributes: int
  feature_dim: int = 2048
  w2v_dim: int = W2V_DIM
  normalize_V: bool = False
  normalize_F: bool = True
  is_bias: bool = True
  uniform_att_1: bool = False
  uniform_att_2: bool = False
  is_sigmoid: bool = False
  non_linear_act: bool = False
  trainable_w2v: bool = True
  dtype: jnp.dtype = jnp.float32

  def class_inputs(self, att, margin):
    """Class attributes / margin from the call, else from the `constants` collection."""
    if self.is_initializing() and att is not None:
      self.variable("constants", "att", lambda: jnp.asarray(att, jnp.float32))
      self.variable("constants", "margin", lambda: jnp.asarray(margin, jnp.float32))
    if att is None:
      if not self.has_variable("constants", "att"):
        raise UserError("DAZLE needs class attributes: pass att= and margin= or variables with 'constants'")
      att = self.get_variable("constants", "att")
      margin = self.get_variable("constants", "margin")
    return jnp.asarray(att, jnp.float32), jnp.asarray(margin, jnp.float32)

  @nn.compact
  def __call__(self, features, att=None, margin=None):
    """features [B, R, F]; att [K, I] (rows L2-normalised); margin [K] (+bias unseen, -bias seen)."""
    att, margin = self.class_inputs(att, margin)
    # The official init: W_1 ~ N(0, 1) unscaled, W_2 = W_3 = 0 (uniform attention at step 0).
    Vn, (w1, w2, w3) = attention.attribute_maps(
        self, (("W_1", nn.initializers.normal(1.0)), ("W_2", nn.initializers.zeros), ("W_3", nn.initializers.zeros)),
        num_attributes=self.num_attributes, w2v_dim=self.w2v_dim, feature_dim=self.feature_dim,
        normalize_V=self.normalize_V, trainable_w2v=self.trainable_w2v)
    x, scale = attention.region_scale(features, self.normalize_F)  # [B, R, F], [B, R]
    # One GEMM for the region scores of W_1, the attention logits and (unless β ≡ 1) the W_3 scores.
    s = attention.region_scores(Vn, (w1, w2) if self.uniform_att_2 else (w1, w2, w3), x, scale)  # [B, R, I, M]
    alpha = attention.attend(s[..., 1])  # [B, R, I]
    region_scores = jax.nn.sigmoid(s[..., 0]) if self.is_sigmoid else s[..., 0]
    # Σ_r α S (the official S_p); linear scores make it W_1 of the attended features F_p.
    e = region_scores.mean(1) if self.uniform_att_1 else attention.pool(alpha, region_scores)  # [B, I]
    if self.non_linear_act:
      e = jax.nn.relu(e)
    s3 = attention.region_scores(Vn, (w3,), x, scale)[..., 0] if self.uniform_att_2 else s[..., 2]
    beta = attention.attribute_weights(attention.pool(alpha, s3))  # [B, I] (only an output when β ≡ 1)
    weight = jnp.ones_like(beta) if self.uniform_att_2 else beta
    raw = jnp.einsum("ki,bi->bk", att, weight * e, precision=attention.HIGHEST)  # [B, K]
    scores = raw + margin if self.is_bias else raw
    return {"scores": scores, "scores_raw": raw, "attention": alpha.transpose(0, 2, 1), "attribute_attention": beta,
            "attribute_scores": e, "attribute_features": attention.attribute_features(alpha, x, scale)}


def universe_inputs(att, classes, unseen_classes, bias=1.0):
  """(att rows [K_u, I], margin [K_u]) for the class ids `classes`, `unseen_classes` get +bias."""
  classes = np.asarray(classes)
  return np.asarray(att, np.float32)[classes], margin_vector(np.isin(classes, unseen_classes), bias)


# ------------------------------------------------------------------------------------------------
# Official checkpoints.

_OPTIONS = ("normalize_V", "normalize_F", "is_bias", "uniform_att_1", "uniform_att_2", "is_sigmoid",
            "non_linear_act", "trainable_w2v")


def _to_numpy(value):
  if hasattr(value, "detach"):
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def from_torch_state_dict(state_dict, *, seen_classes, unseen_classes, att=None, bias=None, **options):
  """Official DAZLE `state_dict` -> (DAZLE module, variables) computing the same `S_pp`.

  Args:
    state_dict: mapping with `V` [I, 300], `W_1`, `W_2`, `W_3` [300, F] and usually the official
      buffers-as-parameters `att` [K, I] (already L2-normalised by the constructor), `mask_bias`
      [1, K] and `bias` (torch tensors or arrays).
    seen_classes, unseen_classes: class ids (0-based), as given to the official constructor.
    att: [K, I] class attributes when the state dict has none (rows are L2-normalised here).
    bias: margin size; default the state dict's `bias` (1 in every notebook).
    **options: the constructor flags the model was trained with (normalize_V, normalize_F, is_bias,
      uniform_att_1, uniform_att_2, is_sigmoid, non_linear_act, trainable_w2v).
  """
  unknown = set(options) - set(_OPTIONS)
  if unknown:
    raise UserError(f"unknown DAZLE options {sorted(unknown)}; valid: {', '.join(_OPTIONS)}")
  sd = {k: _to_numpy(v) for k, v in dict(state_dict).items()}
  missing = [k for k in ("V", "W_1", "W_2", "W_3") if k not in sd]
  if missing:
    raise UserError(f"state dict lacks {missing}; it is not an official DAZLE checkpoint (keys found: "
                    f"{sorted(sd)[:8]})")
  extra = [k for k in sd if k.startswith(("conv1", "emb_func"))]
  if extra:
    raise UserError(f"state dict has {extra[:3]}: a DAZLE trained with is_conv / non_linear_emb, options no "
                    f"official notebook uses and zsl_jax does not implement")
  V, W1 = sd["V"].astype(np.float32), sd["W_1"].astype(np.float32)
  if V.ndim != 2 or W1.shape[0] != V.shape[1]:
    raise UserError(f"V {V.shape} and W_1 {W1.shape} do not fit (V is [I, D], W_1 is [D, F])")
  if att is None:
    if "att" not in sd:
      raise UserError("the state dict has no 'att'; pass att=<[K, I] class attributes>")
    att = sd["att"]
  att = np.asarray(att, np.float64)
  att = (att / np.maximum(np.linalg.norm(att, axis=1, keepdims=True), 1e-12)).astype(np.float32)
  seen, unseen = np.asarray(seen_classes), np.asarray(unseen_classes)
  k = att.shape[0]
  if np.intersect1d(seen, unseen).size or max(seen.max(initial=-1), unseen.max(initial=-1)) >= k:
    raise UserError(f"seen_classes / unseen_classes must be disjoint class ids below {k}")
  if bias is None:
    bias = float(sd["bias"]) if "bias" in sd else 1.0
  is_unseen = np.zeros(k, bool)
  is_unseen[unseen] = True
  margin = margin_vector(is_unseen, bias)
  if "mask_bias" in sd:
    mask = sd["mask_bias"].reshape(-1)
    if mask.shape[0] == k and not np.array_equal(np.sign(mask[np.r_[seen, unseen]]),
                                                 np.sign(margin[np.r_[seen, unseen]])):
      raise UserError("the checkpoint's mask_bias disagrees with seen_classes/unseen_classes; pass the "
                      "class split the model was trained with")
  module = DAZLE(num_attributes=V.shape[0], feature_dim=W1.shape[1], w2v_dim=V.shape[1], **options)
  variables = {"params": {"V": V, "W_1": W1, "W_2": sd["W_2"].astype(np.float32),
                          "W_3": sd["W_3"].astype(np.float32)},
               "constants": {"att": att, "margin": margin}}
  return module, jax.tree_util.tree_map(jnp.asarray, variables)
