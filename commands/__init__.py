"""Thin command-line programs besides ``voco_pretrain`` (installed as ``nnunet_voco.commands``)."""
