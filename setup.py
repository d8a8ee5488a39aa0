"""Packaging for nnunet-voco.

The repository folders map onto one import namespace: ``nnunet_voco`` (library),
``nnunet_voco.pretrain`` (``pretrain/``), ``nnunet_voco.trainers`` (``trainers/``) and
``nnunet_voco.commands`` (``commands/``). No bare top-level ``pretrain``/``trainers`` package is
installed.

nnU-Net finds external trainers through the ``nnUNet_extTrainer`` variable (nnU-Net >= 2.8). A
regular install places ``nnunet_voco.pth`` plus the hook module ``_nnunet_voco_autoload`` in
site-packages; the hook appends our shim folder to that variable at interpreter start. Editable
installs (PEP 660) skip ``data_files``, so every ``voco_*`` command installs the same ``.pth`` file
on first use (see ``nnunet_voco.trainers.discovery``).
"""
import os
import sysconfig

from setuptools import setup

_purelib = os.path.relpath(sysconfig.get_paths()["purelib"], sysconfig.get_paths()["data"])

setup(
    name="nnunet-voco",
    version="0.1.0",
    description="VoCo (Volume Contrast) self-supervised pre-training for nnU-Net v2",
    long_description=open("README.md", encoding="utf-8").read() if os.path.isfile("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "nnunet_voco",
        "nnunet_voco.voco",
        "nnunet_voco.encoders",
        "nnunet_voco.nnunet",
        "nnunet_voco.finetune",
        "nnunet_voco.weights",
        "nnunet_voco.storage",
        "nnunet_voco.pool",
        "nnunet_voco.demo",
        "nnunet_voco.pretrain",
        "nnunet_voco.trainers",
        "nnunet_voco.commands",
    ],
    package_dir={
        "nnunet_voco": "nnunet_voco",
        "nnunet_voco.pretrain": "pretrain",
        "nnunet_voco.trainers": "trainers",
        "nnunet_voco.commands": "commands",
    },
    package_data={"nnunet_voco.trainers": ["nnunet_shim/*.py"]},
    py_modules=["_nnunet_voco_autoload"],
    data_files=[(_purelib, ["nnunet_voco.pth"])],
    install_requires=[
        "nnunetv2>=2.8,<2.9",
        "torch>=2.1.2,!=2.9.*",
        "torchvision",
        "dynamic-network-architectures>=0.4.4,<0.5",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.3.2",
        "blosc2>=3.3.2",
        "SimpleITK>=2.2",
        "monai>=1.4",
        "numpy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"test": ["pytest>=7", "nibabel", "psutil"]},
    entry_points={
        "console_scripts": [
            "voco_pretrain=nnunet_voco.pretrain.cli:main",
            "voco_preprocess_unlabeled=nnunet_voco.commands.preprocess_unlabeled:main",
            "voco_import_weights=nnunet_voco.commands.import_weights:main",
            "voco_plan_like=nnunet_voco.commands.plan_like:main",
            "voco_export_weights=nnunet_voco.commands.export_weights:main",
            "voco_demo=nnunet_voco.commands.demo:main",
        ]
    },
)
