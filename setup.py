from setuptools import find_packages, setup

setup(
    name="vlrouting",
    version="0.1.0",
    description="Vision-language PEFT with routing functions (Qu, Tuytelaars, Moens, ECCV 2024) on CLIP-BART",
    packages=find_packages(include=["vlrouting", "vlrouting.*", "feature_extraction", "feature_extraction.*"]),
    package_data={
        "vlrouting": ["configs/*.yaml", "configs/*.json", "configs/arch/*.json", "data/*.json"],
        "feature_extraction": ["model_configs/*.json"],
    },
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "timm>=1.0",
        "open_clip_torch>=2.24",
        "h5py>=3.10",
        "pycocoevalcap>=1.2",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "numpy>=1.24",
        "pillow>=10.0",
        "matplotlib>=3.7",
    ],
    extras_require={"test": ["pytest>=8.0", "pytest-xdist>=3.5"], "bench": ["peft>=0.13", "psutil>=5.9"]},
)
