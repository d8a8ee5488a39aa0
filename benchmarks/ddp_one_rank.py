"""``voco_pretrain`` through every DDP branch with a single process (one GPU, or the CPU).

    torchrun --standalone --nproc_per_node 1 benchmarks/ddp_one_rank.py -d 995 -p nnUNetResEncUNetLPlans ...

With ``WORLD_SIZE=1`` the command takes its single-process path, and NCCL refuses two ranks on one
GPU, so one GPU cannot run a real 2-rank job. This driver makes the one rank count as distributed
(:class:`OneRankContext`) and builds the process groups exactly as a multi-rank run does
(:func:`nnunet_voco.pretrain.distributed.init_process_groups`: nccl bound to the GPU with the
timeout, plus the gloo group; gloo on the CPU). What then runs is the multi-rank code: DDP wrapping,
SyncBatchNorm in both projectors (CUDA; at world size 1 it normalises like BatchNorm), the stop
agreement, the monitor's share-and-gather, the gloo barriers, rank-0-only writes and
``destroy_process_group``. It prints one ``GPUCHECK_DDP`` line with what was wrapped and converted.

Data workers may start from a clean process (``forkserver`` on CUDA) that imports this file as
``__mp_main__``: everything but the definitions is under the ``__main__`` guard.
"""
from __future__ import annotations

import os
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    from nnunet_voco.pretrain import cli, distributed, loop, run_setup

    class OneRankContext(distributed.RunContext):
        """A world of one that takes the distributed branches."""

        @property
        def distributed(self) -> bool:
            return True

    def init_context(device_name):
        device = distributed.resolve_device(device_name)
        device, control = distributed.init_process_groups(device, int(os.environ.get("LOCAL_RANK", "0")))
        return OneRankContext(device, 0, 1, int(os.environ.get("LOCAL_RANK", "0")), control, 1)

    training_model = run_setup.RunSetup.training_model

    def reporting_training_model(self):
        model = training_model(self)
        sync = [sum(isinstance(m, torch.nn.SyncBatchNorm) for m in p.modules())
                for p in (self.model.projector, self.model.teacher_projector)]
        print(f"GPUCHECK_DDP wrapped={type(model).__name__} syncbn_student={sync[0]} syncbn_teacher={sync[1]} "
              f"device={self.ctx.device} backend={torch.distributed.get_backend()} compiled={self.model.compiled}",
              flush=True)
        return model

    loop.init_context = init_context
    run_setup.RunSetup.training_model = reporting_training_model
    try:
        return cli.main(argv)
    finally:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            print(f"GPUCHECK_PEAK_ALLOC_GIB {torch.cuda.max_memory_allocated() / 2**30:.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
