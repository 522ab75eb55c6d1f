"""zsl_jax: HGR-Net and DAZLE/VSMR zero-shot image classification in JAX/Flax."""

__version__ = "0.1.0"
