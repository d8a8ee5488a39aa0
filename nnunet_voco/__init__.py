"""nnunet-voco: VoCo (Volume Contrast) self-supervised pre-training for nnU-Net v2."""

__version__ = "0.1.0"
