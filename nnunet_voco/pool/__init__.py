"""Label-free pools: turning raw images without labels into an nnU-Net-preprocessed dataset for pre-training.

``create`` ties the steps together: ``inputs`` (finding the images), ``input_checks`` (verifying them),
``target`` (the planned dataset whose plans are borrowed), ``case`` (one case, preprocessed as nnU-Net
would), ``runner`` (the crash-tolerant process runner), ``provenance`` (``voco_pool.json`` and the
pool's dataset files), ``report`` (what a run did).
"""
