"""Label-free pools: turning raw images without labels into an nnU-Net-preprocessed dataset for pre-training."""
