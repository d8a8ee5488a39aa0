"""The VoCo method (Wu et al., CVPR 2024; TPAMI extension "Large-scale 3D medical image pre-training with
geometric context priors"): crop geometry, position targets, projection heads, the loss, the teacher,
augmentation and the held-out position monitor. Pure torch/numpy; it knows nothing of nnU-Net."""
