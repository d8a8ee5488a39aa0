"""``voco_demo``: the whole nnunet-voco workflow, run offline through the real commands on a synthetic phantom.

The wing holds the demo's data, its plan and its report, each in one module:

- ``phantom_case``: one synthetic CT-like case (anatomy, intensities, noise); ``phantom``: writes
  the cases as an nnU-Net raw dataset, plus the image-only pool, and the ``SYNTHETIC_NOTE``.
- ``run_sizes``: the default run and ``--quick`` (phantom seeds, pre-training steps, trained seeds);
  ``arms``: the four trainers and the two comparisons; ``folders``: where a run keeps its files.
- ``stages``: the 16 (``--quick``: 8) stages, each a command a user would type and the outputs
  that mark it done; ``workflow``: runs them re-entrantly, streams and times them, then reports.
- ``results``: reads what the commands left (Dice, ``metrics.jsonl``, budgets); ``figure``: the PNG;
  ``report``: seed statistics, verdicts, the printed tables and ``results.json``.

The commands run as subprocesses, so nothing here imports ``nnunet_voco.pretrain``,
``nnunet_voco.trainers`` or ``nnunet_voco.commands``; ``voco_demo`` itself is ``commands/demo.py``.
"""
