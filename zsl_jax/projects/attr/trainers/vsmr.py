"""VSMR on the shared engine; README "VSMR: where the reference is incomplete" lists the choices made here.

One run trains the three parts of the method side by side; their losses touch disjoint
parameters, so the sum equals training them separately, except that the semantic autoencoder
here regresses the *current* in-batch visual prototypes (stop-gradient) instead of prototypes of
a finished visual branch (the reference's second stage):
- visual branch: L_PS + L_PP on attribute-masked image vectors, masks from class attributes > 0;
- attribute classifier: BCE against the same binary masks, on trainval (or train) images only;
- semantic encoder/decoder: 0.1 · L_AP + 1.0 · L_ED.
Evaluation: seen prototypes are exact class means of the image vectors of the training images
(ground-truth masks, as the CUB50 script), unseen prototypes E(a_c), optionally refined with the
top-k most similar unlabeled unseen-split images (`vsmr.transductive_refine`, off by default,
transductive results say so in the record); images are classified by cosine to the prototypes with
masks predicted by the attribute classifier.
"""
import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax import config_lib
from zsl_jax.projects.attr.losses import vsmr as vsmr_losses
from zsl_jax.projects.attr.models import vsmr as vsmr_model
from zsl_jax.projects.attr.trainers import dazle as dazle_trainer

# vsmr.test_masks: attribute masks of test images from the attribute classifier (the method), or the
# true classes' masks (a diagnostic upper bound)
TEST_MASKS = ("predicted", "oracle")


def _unit_rows(x):
  """Rows scaled to unit norm in float64; a zero row stays zero (cosine 0 to everything)."""
  x = np.asarray(x, np.float64)
  n = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.where(n > 0, n, 1.0)


def _cosine_np(a, b):
  """Pairwise cosine [N, M], each row normalised on its own (as `losses.vsmr.cosine`).

  The scale-invariant L_PS / L_PP let image vectors shrink freely (norms 1e-11..1e-8 after the AWA2
  demo's 1000 steps); torch's max(|a||b|, 1e-8) then turned every seen-prototype cosine into ~0
  while E(a) prototypes (norm ~sqrt(F)) kept theirs, so GZSL predicted unseen classes for all images.
  """
  return (_unit_rows(a) @ _unit_rows(b).T).astype(np.float32)


def refine_prototypes(prototypes, queries, k):
  """Transductive top-k refinement: p'_c = (p_c + Σ of the k queries most similar to p_c) / (1 + k)."""
  k = min(int(k), len(queries))
  if k <= 0:
    return prototypes
  sim = _cosine_np(queries, prototypes)  # [N, U]
  top = np.argsort(-sim, axis=0, kind="stable")[:k]  # [k, U]
  return (prototypes + queries[top].sum(0)) / (1.0 + k)


class Trainer(dazle_trainer.ZSLTrainerBase):

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
    config_lib.check_choices(config, {"model.classifier_pool": vsmr_model.POOLS, "vsmr.test_masks": TEST_MASKS})

  def __init__(self, config, mesh):
    super().__init__(config, mesh)
    m = config.model
    self.att_bin = self.att > 0  # [K, I] class attribute masks
    self.model = vsmr_model.VSMR(
        num_attributes=self.dataset.num_attributes, feature_dim=self.dataset.features.feature_dim,
        w2v_dim=self.dataset.w2v.shape[1], hidden=m.hidden, normalize_V=m.normalize_V,
        normalize_F=m.normalize_F, trainable_w2v=m.trainable_w2v, classifier_pool=m.classifier_pool)
    model = self.model
    self._embed_gt = jax.jit(lambda v, x, lab, table: model.apply(v, x, table[lab], method=model.embed)["embedding"])

    def embed_pred(v, x):
      mask = model.apply(v, x, method=model.attribute_logits) > 0
      return model.apply(v, x, mask, method=model.embed)["embedding"], mask
    self._embed_pred = jax.jit(embed_pred)
    self._encode = jax.jit(lambda v, a: model.apply(v, a, method=model.encode))
    classes = self.train_universe["classes"]
    self._train_att = jnp.asarray(self.att[classes])
    self._train_mask = jnp.asarray(self.att_bin[classes])
    self._train_seen = jnp.asarray(~self.train_universe["unseen"])

  def universe(self, kind):
    """Test seen prototypes come from every labelled seen image (trainval): with select_on=val the
    validation classes are seen classes of the test universe, and their images lie outside `train`."""
    uni = super().universe(kind)
    if kind == "test":
      uni["proto_split"] = "trainval"
    return uni

  def init_variables(self, rng):
    f = self.dataset.features
    k = len(self.train_universe["classes"])
    a = self.dataset.num_attributes
    variables = self.model.init(rng, jnp.zeros((1, f.num_regions, f.feature_dim)), jnp.ones((1, a), bool),
                                jnp.zeros((k, a)))
    w2v = np.asarray(self.dataset.w2v, np.float64)
    v0 = w2v / np.maximum(np.linalg.norm(w2v, axis=1, keepdims=True), 1e-12)
    params = dict(variables["params"])
    params["visual"] = {**params["visual"], "V": jnp.asarray(v0, jnp.float32)}
    return {"params": params}

  def loss(self, variables, batch, rng, step):
    del rng
    labels = batch["label"]
    mask = self._train_mask[labels]  # [B, I] ground-truth attribute masks
    out = self.model.apply(variables, batch["features"], mask, self._train_att)
    w = self.config.loss
    l_ps, l_pp, protos, present = vsmr_losses.prototype_losses(out["embedding"], labels, self._train_att.shape[0])
    l_ap, l_ed = vsmr_losses.semantic_losses(out["prototypes"], out["reconstruction"], self._train_att, protos,
                                             present, self._train_seen, w.normalize_targets)
    l_bce = vsmr_losses.attribute_bce(out["attribute_logits"], mask)
    total = w.ps * l_ps + w.pp * l_pp + w.ap * l_ap + w.ed * l_ed + w.bce * l_bce
    mask_acc = jnp.mean((out["attribute_logits"] > 0) == mask)
    return total, ({}, {"loss_ps": l_ps, "loss_pp": l_pp, "loss_ap": l_ap, "loss_ed": l_ed,
                                             "loss_bce": l_bce, "train_mask_acc": mask_acc})

  def eval_scores(self, variables, universe, map_batches):
    """Two passes through the evaluator's `map_batches`: class-mean prototypes, then cosine scores."""
    classes, unseen = universe["classes"], universe["unseen"]
    table = jnp.asarray(self.att_bin)
    source = self.dataset.source
    train = map_batches(source(universe["proto_split"]),
                        lambda g: {"f": self._embed_gt(variables, g["features"], g["label"], table)})
    v = self.config.vsmr
    if v.test_masks == "oracle":  # Diagnostic upper bound: class attribute masks of the true labels.
      pred = lambda g: {"f": self._embed_gt(variables, g["features"], g["label"], table), "mask": table[g["label"]]}
    else:
      pred = lambda g: dict(zip(("f", "mask"), self._embed_pred(variables, g["features"])))
    seen_q = map_batches(source(universe["seen_split"]), pred)
    unseen_q = map_batches(source(universe["unseen_split"]), pred)
    protos = np.zeros((len(classes), train["f"].shape[1]), np.float32)
    for j in np.flatnonzero(~unseen):
      rows = train["label"] == classes[j]
      protos[j] = train["f"][rows].mean(0) if rows.any() else 0.0
    protos[unseen] = np.asarray(self._encode(variables, jnp.asarray(self.att[classes[unseen]])))
    if v.transductive_refine and unseen_q is not None:
      queries = unseen_q["f"]
      if self.config.loss.normalize_targets:  # E(a) regresses unit-RMS prototypes: average on that scale
        queries = _unit_rows(queries) * np.sqrt(queries.shape[1])
      protos[unseen] = refine_prototypes(protos[unseen], queries, v.top_k)
    out = {"info": {"transductive": bool(v.transductive_refine), "test_masks": v.test_masks}}
    masks, truth = [], []
    for name, q in (("seen", seen_q), ("unseen", unseen_q)):
      if q is None:
        out[name] = None
        continue
      out[name] = {"scores": _cosine_np(q["f"], protos), "label": q["label"]}
      masks.append(q["mask"].astype(bool))
      truth.append(self.att_bin[q["label"]])
    m, t = np.concatenate(masks), np.concatenate(truth)
    tp = np.sum(m & t)
    out["info"]["attr_f1"] = float(2 * tp / max(np.sum(m) + np.sum(t), 1))  # micro-F1 of predicted masks
    return out
