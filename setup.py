"""QT-Opt for real: scalable vision-based grasping RL as a Beam data pipeline and a TF trainer.

This file is also what Dataflow workers install (``--setup_file ./setup.py``), so every module a
worker imports lives in one of the packages below and the sdist carries the presets.
"""

import glob

from setuptools import find_packages, setup

PACKAGES = ("pipelines", "model", "robot", "schemas")
# What `pip install 'apache-beam[dask]==2.77.0'` resolves to on Python 3.11 (dask and distributed
# 2026.8.0); pipelines/machinery/dask_runner.py reaches into Beam's Dask translation, so Beam stays < 3.
DASK = ["apache-beam[dask]>=2.77,<3", "dask>=2026.8,<2027", "distributed>=2026.8,<2027"]

setup(
    name="qtopt",
    version="0.1.0",
    description="QT-Opt grasping: pybullet collection, Beam relabelling, TensorFlow training",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=[f"{p}" for p in PACKAGES] + [f"{p}.*" for p in PACKAGES]),
    data_files=[("share/qtopt/configs", sorted(glob.glob("configs/*.yaml")))],
    install_requires=[
        "apache-beam[gcp]>=2.60,<3",
        # The CPU build is enough for this project and a third of the download.
        "tensorflow-cpu>=2.17,<2.22; sys_platform == 'linux' and platform_machine == 'x86_64'",
        "tensorflow>=2.17,<2.22; sys_platform != 'linux' or platform_machine != 'x86_64'",
        "tfrecord>=1.14,<2",
        "crc32c>=2.3",
        # ISA-L's gzip: every reader decompresses with it, `qtopt shard` also compresses with it.
        "isal>=1.6,<2",
        "protobuf>=4.25,<7",
        "pyarrow>=15",
        "gcsfs>=2024.6",
        "fsspec>=2024.6",
        "numpy>=1.26,<3",
        "pybullet>=3.2.6,<3.3",
        "gymnasium>=1.0,<2",
        "pyyaml>=6",
        "pillow>=10",
        "matplotlib>=3.7",
        "tqdm>=4.66",
        # qtopt export rlds: TFDS's serializer and metadata writer (4.9.10 resolves beside
        # tensorflow-cpu 2.21 on Python 3.11).
        "tensorflow-datasets>=4.9.10,<5",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "gcp-storage-emulator>=2024.8",
            "import-linter>=2.1",
            *DASK,  # tests/test_pipelines_runners.py runs the jobs on a Dask cluster
        ],
        # The reference simulator of benchmarks/sim_throughput.py (pybullet_envs needs old gym).
        "bench": [
            "gym==0.23.1",
        ],
        # --runner=DaskRunner (pipelines/machinery/dask_runner.py): Beam's Dask runner on a Dask cluster.
        "dask": DASK,
        # MP4 output of `qtopt render` (GIF needs only Pillow).
        "render": [
            "imageio-ffmpeg>=0.5",
        ],
        "dev": [
            "pytest>=8",
            "hypothesis>=6.100",
            "gcp-storage-emulator>=2024.8",
            "import-linter>=2.1",
            *DASK,
            "ruff>=0.5",
        ],
    },
    entry_points={"console_scripts": ["qtopt=pipelines.cli:main"]},
)
