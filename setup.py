"""zsl_jax: HGR-Net and DAZLE/VSMR zero-shot classification in JAX/Flax."""
import setuptools

# Ranges that resolve together on Python 3.11 and 3.12.
INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "tensorflow-datasets>=4.9.10,<5",
    "array-record>=0.8.6",
    "importlib_resources>=6",  # tfds imports it while building datasets without declaring it
    "ml-collections>=1.1.0,<2",
    "nltk>=3.8.1,<4",
    "numpy>=2.0,<3",
    "absl-py>=2.1,<3",
    "h5py>=3.10,<4",
    "deflate>=0.9,<1",  # libdeflate: gzip feature chunks inflate at 2.3x zlib's speed (attr/data/hdf5_rows.py)
    "scipy>=1.13,<2",
    "pillow>=10.0",
    "tensorboardX>=2.6,<3",
    "tqdm>=4.66,<5",
    "matplotlib>=3.8,<4",
    "instant-clip-tokenizer>=0.1.1,<0.2",  # CLIP BPE vocabulary inside the wheel, no download
]

EXTRAS = {
    "cuda": ["jax[cuda12]>=0.10.0,<0.11"],
    "tpu": ["jax[tpu]>=0.10.0,<0.11"],
    "torch": [
        "torch>=2.4",
        "torchvision>=0.19",
        "open_clip_torch>=2.24",
        "timm>=1.0",          # ships the ImageNet-21K-P class list (build_hierarchy --p_list timm)
        "safetensors>=0.4",   # open_clip .safetensors checkpoints (convert_clip)
    ],
    "test": [
        "pytest>=8",
        "scikit-learn>=1.4",
        "networkx>=2.5",       # tests/test_tie_break.py: hierarchy tie_break=networkx against networkx itself
        "ruff>=0.17.6,<0.18",  # ruff.toml relies on this minor's preview rules (E117)
    ],
}

setuptools.setup(
    name="zsl_jax",
    version="0.1.0",
    description="HGR-Net and DAZLE/VSMR zero-shot image classification in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["zsl_jax", "zsl_jax.*"]),
    package_data={"zsl_jax.projects.hgr": ["resources/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["zsl-jax=zsl_jax.main:run"]},
)
