"""The Swin trainer's gradient checkpointing together with nnU-Net's default ``torch.compile`` (issue 18, item 8).

``nnUNetTrainerVoCoSwin`` builds SwinUNETR-v2 with gradient checkpointing on, and nnU-Net compiles
every network on CUDA unless ``nnUNet_compile`` says otherwise; the test suite sets it to 0 and
nnU-Net never compiles on the CPU, so no end-to-end test meets the pair. This test compiles the
network the trainer builds, through dynamo and AOTAutograd (``backend="aot_eager"``: the tracing and
the joint forward/backward graph inductor receives, without building C++), and checks that
MONAI's non-reentrant checkpoints trace, and that output and gradients equal the eager network's.
Measured here: the one graph break (counted twice, forward and its resume) is MONAI's
``_check_input_size`` numpy test at the start of ``forward``, not the checkpoints.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch


@pytest.mark.slow  # ~20 s of tracing on an idle core, ~50 s on a busy one
def test_gradient_checkpointing_compiles_with_the_trainers_network():
    from torch._dynamo.utils import counters

    from nnunet_voco.trainers.swin_trainers import FEATURE_SIZE_KEY, nnUNetTrainerVoCoSwin

    torch.manual_seed(0)
    assert nnUNetTrainerVoCoSwin.voco_gradient_checkpointing
    net = nnUNetTrainerVoCoSwin.build_network_architecture(None, SimpleNamespace(configuration={FEATURE_SIZE_KEY: 12}),
                                                           1, 2, False)
    blocks = [m for m in net.modules() if hasattr(m, "use_checkpoint")]
    assert blocks and all(m.use_checkpoint for m in blocks)
    eager = copy.deepcopy(net)
    x = torch.randn(1, 1, 32, 32, 64)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(net, backend="aot_eager")
    out = compiled(x)
    out.square().mean().backward()
    reference = eager(x)
    reference.square().mean().backward()
    torch.testing.assert_close(out, reference)
    for p, q in zip(net.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    breaks = list(counters["graph_break"])
    assert all("_check_input_size" in reason for reason in breaks), breaks  # none from the checkpoints
