"""Weights of the ecosystem in and out (DESIGN.md section 8; facts in ECOSYSTEM_WEIGHTS.md).

One module per format family (:mod:`.nnssl_format`, :mod:`.nnunet_format`, :mod:`.dna_format`,
:mod:`.swin_release`), the safe reader (:mod:`.reading`), the architecture read from plans or shapes
(:mod:`.architecture`), the adaptation rules shared by the trainers, ``--init`` and the planner
(:mod:`.adaptation`), the import (:mod:`.importer`), its inspection (:mod:`.inspection`), the
continued pre-training start (:mod:`.pretrain_init`) and the nnssl export (:mod:`.nnssl_export`).
"""
