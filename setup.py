"""resnet-keras: the ResNets of He et al. on TensorFlow and Keras 3.

TensorFlow is an extra so that pip never installs two TensorFlows:
    pip install -e ".[cpu]"    # tensorflow-cpu, smallest download, no GPU
    pip install -e ".[gpu]"    # tensorflow[and-cuda], CUDA libraries from pip (Linux)
    pip install -e ".[tf]"     # the plain tensorflow wheel
"""

from setuptools import find_packages, setup

TENSORFLOW = ">=2.16,<2.22"

setup(
    name="resnet-keras",
    version="0.1.0",
    description="Paper-faithful ResNets (He et al. 2015, 2016) on TensorFlow and Keras 3: build, train, tune, export.",
    # The front page; the guides are in docs/ (mkdocs.yml).
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["resnet_keras", "resnet_keras.*"]),
    # Our trained weights and their cards (resnet_keras/pretrained/shipped.py), about 1 MB a set.
    package_data={"resnet_keras.pretrained": ["weights/*.weights.h5", "weights/*.json"]},
    install_requires=[
        "keras>=3.5",
        "click>=8.1",
        "numpy",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets 4.9.10 imports it on every Python but only declares it for old ones.
        "importlib_resources",
        "keras-tuner>=1.4",
        # keras-tuner imports tensorboard's hparams plugin; TF 2.21 no longer installs tensorboard.
        "tensorboard",
        "scikit-learn",  # the bundled `digits` dataset, and Bayesian search in keras-tuner
        "matplotlib",  # training-curve and confusion-matrix PNGs
        "pyyaml",  # --config files
        "pillow",  # `prepare` decodes and re-encodes images (matplotlib already brings it)
        # torchvision/timm weights in the hub's .safetensors format, read with its numpy API (no PyTorch).
        "safetensors>=0.4",
        # LiteRT's interpreter, which TF 2.21 recommends over the deprecated tf.lite.Interpreter (no Windows
        # wheels; export.py falls back to tf.lite.Interpreter there).
        "ai-edge-litert; platform_system != 'Windows'",
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu{TENSORFLOW}"],
        "gpu": [f"tensorflow[and-cuda]{TENSORFLOW}"],
        "tf": [f"tensorflow{TENSORFLOW}"],
        # import-linter checks the layer contracts in .importlinter (docs/architecture.md).
        "test": ["pytest>=7", "pytest-xdist", "ruff>=0.6", "import-linter>=2.1,<3"],
        # Legacy (pre-1.6, non-zip) PyTorch .pth files only (torch.load with weights_only=True); torch.save zip
        # archives, every torchvision/timm file, are read without it. Several GB, so never a default.
        "torch": ["torch>=2.4"],
        # `export --format onnx` and `predict` on .onnx files (checked: onnx 1.23.2, onnxruntime 1.32.0 and
        # tf2onnx 1.17.0 install beside tensorflow-cpu 2.21, numpy 2.4 and protobuf 7 without changing them).
        "onnx": ["onnx>=1.14", "onnxruntime>=1.17", "tf2onnx>=1.16"],
        # The documentation site (mkdocs.yml, docs/): `mkdocs build --strict`, built-in readthedocs theme; the
        # API page is rendered from docstrings by static analysis (griffe), without importing the package.
        # mkdocstrings 0.30.1 failed here (Highlight() missing `md`); 1.0.8 + mkdocstrings-python 2.0.9 build cleanly.
        "docs": ["mkdocs>=1.6,<2", "mkdocstrings[python]>=1.0,<2", "mkdocstrings-python>=2.0,<3"],
    },
    entry_points={"console_scripts": ["resnet-keras=resnet_keras.cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
