"""Encoder adapters: build an encoder from nnU-Net plans and return its per-stage feature maps."""
