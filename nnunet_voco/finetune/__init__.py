"""Fine-tuning glue for the trainers: finding the weights a run wrote (:mod:`.weights_lookup`), checking and
loading them into nnU-Net's network (:mod:`.weights_loading`), and the warm-up + poly learning rate
(:mod:`.lr_schedule`)."""
