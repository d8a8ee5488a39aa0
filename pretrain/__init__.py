"""The ``voco_pretrain`` program (installed as ``nnunet_voco.pretrain``)."""
