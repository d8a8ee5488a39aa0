"""Demo-budget variants of the four VoCo arms, seeded from the fold number (fold = seed).

``voco_demo`` (:mod:`nnunet_voco.demo.stages`) compares, on the same labelled phantom cases:

    * frozen probe: ``nnUNetTrainerVoCoFrozen_demo`` vs ``nnUNetTrainerVoCoFrozenScratch_demo``
      (:mod:`nnunet_voco.trainers.frozen_trainers`);
    * full fine-tuning: ``nnUNetTrainerVoCo_demo`` vs ``nnUNetTrainerVoCoScratch_demo``
      (:mod:`nnunet_voco.trainers.voco_trainers`).

The classes of one budget differ only in their base class, so each comparison is matched: same
network, optimiser, warm-up, epochs, iterations, batch size and augmentation.

Seeding (``voco_seed_from_fold``): the fold number is the seed. ``random``, ``numpy`` and ``torch``
are seeded with ``fold`` before nnU-Net builds anything, so the decoder (and, in the scratch arms,
the encoder) start from a fold-specific initialisation. The demo's ``splits_final.json`` holds
identical folds (same training and validation cases), so ``nnUNetv2_train ID 3d_fullres {0,1,2} -tr
X_demo`` is three seeds of one experiment. nnU-Net's augmentation workers are not made
deterministic: two runs with the same seed differ a little. ``fold == "all"`` uses seed 0.

Budgets (what chose them is in :mod:`nnunet_voco.demo.run_sizes`): ``_demo`` for the default
``voco_demo`` run (2 idle CPU cores, 12 minutes measured), ``_demoquick`` for ``--size quick`` (a CI
smoke test; its Dice says nothing), ``_demofull`` for ``--size full`` (40 x 25 iterations: scratch learned every organ on a tuning case;
hours on CPU) and ``_demogpu`` for ``--size gpu`` (one GPU). All run one validation iteration per epoch and no
test-time mirroring in nnU-Net's final validation and in ``nnUNetv2_predict``, which keeps CPU
inference cheap. The variants of one budget differ only in their base class.
"""
from __future__ import annotations

from nnunet_voco.trainers.frozen_trainers import nnUNetTrainerVoCoFrozen, nnUNetTrainerVoCoFrozenScratch
from nnunet_voco.trainers.training_budget import TrainingBudget
from nnunet_voco.trainers.voco_trainers import nnUNetTrainerVoCo, nnUNetTrainerVoCoScratch

__all__ = [f"{base}{suffix}" for suffix in ("_demo", "_demoquick", "_demofull", "_demogpu")
           for base in ("nnUNetTrainerVoCo", "nnUNetTrainerVoCoScratch", "nnUNetTrainerVoCoFrozen",
                        "nnUNetTrainerVoCoFrozenScratch")]

DEMO_BUDGET = TrainingBudget(epochs=8, iterations_per_epoch=25, val_iterations_per_epoch=1, batch_size=2)
QUICK_BUDGET = TrainingBudget(epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1, batch_size=1)
FULL_BUDGET = TrainingBudget(epochs=40, iterations_per_epoch=25, val_iterations_per_epoch=1, batch_size=2)
GPU_BUDGET = TrainingBudget(epochs=40, iterations_per_epoch=25, val_iterations_per_epoch=1, batch_size=2)


class _DemoRecipe:
    """What every demo trainer shares besides its budget: fold = seed, no mirroring (warm-up: the budget's 2%)."""

    voco_seed_from_fold = True
    voco_test_time_mirroring = False


class nnUNetTrainerVoCo_demo(_DemoRecipe, nnUNetTrainerVoCo):
    """:class:`nnUNetTrainerVoCo` at the default ``voco_demo`` budget; fold = seed."""

    voco_budget = DEMO_BUDGET


class nnUNetTrainerVoCoScratch_demo(_DemoRecipe, nnUNetTrainerVoCoScratch):
    """:class:`nnUNetTrainerVoCoScratch` at the default ``voco_demo`` budget; fold = seed."""

    voco_budget = DEMO_BUDGET


class nnUNetTrainerVoCoFrozen_demo(_DemoRecipe, nnUNetTrainerVoCoFrozen):
    """:class:`nnUNetTrainerVoCoFrozen` at the default ``voco_demo`` budget; fold = seed."""

    voco_budget = DEMO_BUDGET


class nnUNetTrainerVoCoFrozenScratch_demo(_DemoRecipe, nnUNetTrainerVoCoFrozenScratch):
    """:class:`nnUNetTrainerVoCoFrozenScratch` at the default ``voco_demo`` budget; fold = seed."""

    voco_budget = DEMO_BUDGET


def _at_budget(base: type, suffix: str, budget: TrainingBudget, run: str) -> type:
    """``base`` (a ``_demo`` class) at another budget, named ``<nnU-Net name><suffix>``."""
    name = base.__name__.replace("_demo", suffix)
    return type(name, (base,), {"__doc__": f":class:`{base.__name__}` at the {run} budget; fold = seed.",
                                "__module__": __name__, "__qualname__": name, "voco_budget": budget})


_DEMO = (nnUNetTrainerVoCo_demo, nnUNetTrainerVoCoScratch_demo, nnUNetTrainerVoCoFrozen_demo,
         nnUNetTrainerVoCoFrozenScratch_demo)
(nnUNetTrainerVoCo_demoquick, nnUNetTrainerVoCoScratch_demoquick, nnUNetTrainerVoCoFrozen_demoquick,
 nnUNetTrainerVoCoFrozenScratch_demoquick) = (_at_budget(c, "_demoquick", QUICK_BUDGET, "--size quick") for c in _DEMO)
(nnUNetTrainerVoCo_demofull, nnUNetTrainerVoCoScratch_demofull, nnUNetTrainerVoCoFrozen_demofull,
 nnUNetTrainerVoCoFrozenScratch_demofull) = (_at_budget(c, "_demofull", FULL_BUDGET, "--size full") for c in _DEMO)
(nnUNetTrainerVoCo_demogpu, nnUNetTrainerVoCoScratch_demogpu, nnUNetTrainerVoCoFrozen_demogpu,
 nnUNetTrainerVoCoFrozenScratch_demogpu) = (_at_budget(c, "_demogpu", GPU_BUDGET, "--size gpu") for c in _DEMO)
