"""VSMR (Zhang et al., JEI 2024): DAZLE's attention gated by an attribute mask.

Three parts, one module so that one checkpoint holds the whole method:
- `visual`: DAZLE's dense attribute attention, restricted to the attributes the image is believed
  to have (mask M [B, I]: ground-truth class attributes > 0 in training, the attribute classifier
  at test). Absent attributes get logit -1000 before the softmax (an explicit mask instead of the
  reference's exact-zero test), their maps are zeroed, and their weights w = sigmoid(-1000)
  vanish. The image vector is f = Σ_i w_i h_i [B, F].
- `attr_classifier`: Linear(F -> I) on the mean of the region features. With a frozen backbone this
  is exactly the reference's ResNet-101 with a new fc (torchvision's avgpool is that mean).
- `encoder` / `decoder`: the semantic autoencoder (attributes -> visual prototype -> attributes).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from zsl_jax.projects.attr.models import attention


class MaskedAttention(nn.Module):
  """Region features [B, R, F] + mask [B, I] -> image vector f [B, F] and the attention parts."""
  num_attributes: int
  feature_dim: int = 2048
  w2v_dim: int = 300
  normalize_V: bool = True
  normalize_F: bool = True
  trainable_w2v: bool = True

  @nn.compact
  def __call__(self, features, mask):
    # The reference initialises W_2, W_3 ~ N(0, 1) here (zeros would mask every attribute).
    Vn, maps = attention.attribute_maps(
        self, (("W_2", nn.initializers.normal(1.0)), ("W_3", nn.initializers.normal(1.0))),
        num_attributes=self.num_attributes, w2v_dim=self.w2v_dim, feature_dim=self.feature_dim,
        normalize_V=self.normalize_V, trainable_w2v=self.trainable_w2v)
    x, scale = attention.region_scale(features, self.normalize_F)  # [B, R, F], [B, R]
    mask = mask.astype(bool)
    s = attention.region_scores(Vn, maps, x, scale)  # [B, R, I, 2]: attention logits, W_3 scores
    alpha = attention.attend(s[..., 0], mask)  # [B, R, I] (zero for absent attributes)
    weights = attention.attribute_weights(attention.pool(alpha, s[..., 1]), mask)  # [B, I]
    # f = Σ_i w_i h_i = Σ_r (Σ_i w_i α_ri) x_r / |x_r|: one weight per region, no [B, I, F] features.
    region_weights = jnp.einsum("bri,bi->br", alpha, weights, precision=attention.HIGHEST) * scale  # [B, R]
    embedding = jnp.einsum("br,brf->bf", region_weights, x, precision=attention.HIGHEST)  # [B, F]
    return {"embedding": embedding, "attention": alpha.transpose(0, 2, 1), "attribute_attention": weights,
            "attribute_features": attention.attribute_features(alpha, x, scale)}


class MLP(nn.Module):
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.out, name="fc2")(nn.relu(nn.Dense(self.hidden, name="fc1")(x)))


POOLS = ("mean", "max")  # model.classifier_pool: how the attribute classifier pools the regions


class VSMR(nn.Module):
  num_attributes: int
  feature_dim: int = 2048
  w2v_dim: int = 300
  hidden: int = 1850
  normalize_V: bool = True
  normalize_F: bool = True
  trainable_w2v: bool = True
  classifier_pool: str = "mean"  # mean = torchvision's avgpool (the reference); max for localised demo data

  def setup(self):
    self.visual = MaskedAttention(self.num_attributes, self.feature_dim, self.w2v_dim, self.normalize_V,
                                  self.normalize_F, self.trainable_w2v)
    self.attr_classifier = nn.Dense(self.num_attributes)
    self.encoder = MLP(self.hidden, self.feature_dim)
    self.decoder = MLP(self.hidden, self.num_attributes)

  def __call__(self, features, mask, class_att):
    """Everything at once (used for init): visual outputs, attribute logits, E(a), D(E(a))."""
    out = self.embed(features, mask)
    out["attribute_logits"] = self.attribute_logits(features)
    out["prototypes"] = self.encoder(class_att)
    out["reconstruction"] = self.decoder(out["prototypes"])
    return out

  def embed(self, features, mask):
    return self.visual(features, mask)

  def attribute_logits(self, features):
    """Per-image attribute logits [B, I] from the pooled (un-normalised) region features."""
    x = jax.lax.stop_gradient(features.astype(jnp.float32))
    return self.attr_classifier(x.max(1) if self.classifier_pool == "max" else x.mean(1))

  def encode(self, class_att):
    return self.encoder(class_att)

  def autoencode(self, class_att):
    p = self.encoder(class_att)
    return p, self.decoder(p)
