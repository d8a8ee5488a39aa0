"""Precision on the GPU path (issue 18, item 7), as far as the CPU can show it.

* bf16 is the CUDA default only where the GPU has native bf16; else fp16 with a GradScaler, said in
  the log (``torch.cuda.is_bf16_supported`` is replaced by a stand-in: no GPU here).
* Under fp16 a GradScaler overflow step (finite loss, overflowing gradients) is not a non-finite
  loss towards ``--max_nonfinite``; a real GradScaler runs on the CPU, the overflow comes from a
  gradient hook.
* Pooling, projector and loss run in fp32 under autocast (CPU bf16 autocast stands in for CUDA).
"""
from __future__ import annotations

import pytest
import torch

from nnunet_voco.voco.synthetic_batches import synthetic_batch
from nnunet_voco.nnunet import UserInputError
from nnunet_voco.pretrain.config import PretrainConfig
from nnunet_voco.pretrain.distributed import RunContext, autocast, resolve_precision
from nnunet_voco.pretrain.loop import train_step
from nnunet_voco.voco.heads import pool_stage_features
from nnunet_voco.voco.loss import VoCoLoss
from nnunet_voco.voco.model import VoCoModel
from nnunet_voco.voco.sampling import CropLayout
from test_model import tiny_bundle

CUDA = torch.device("cuda")


@pytest.mark.parametrize("native_bf16, dtype, note", [
    (True, torch.bfloat16, None),
    (False, torch.float16, "VoCo: precision fp16 with loss scaling (GradScaler): this GPU has no native bf16"),
])
def test_default_precision_follows_the_gpu(monkeypatch, native_bf16, dtype, note):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(
        including_emulation) or native_bf16)
    got, line = resolve_precision(None, CUDA)
    assert got == dtype and asked == [False]  # emulated bf16 does not count
    assert (line or "").startswith(note or "")
    assert (line is None) == (note is None)


def test_explicit_precisions(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_precision("fp32", CUDA) == (None, None)
    assert resolve_precision("fp16", CUDA) == (torch.float16, None)
    dtype, note = resolve_precision("bf16", CUDA)
    assert dtype == torch.bfloat16 and "emulated" in note
    assert resolve_precision(None, torch.device("cpu")) == (None, None)
    with pytest.raises(UserInputError, match="--precision bf16 needs a CUDA device"):
        resolve_precision("bf16", torch.device("cpu"))


def _step_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = VoCoModel(tiny_bundle(), "v2", VoCoLoss("v2"), head_dim=16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batch = synthetic_batch(CropLayout((8, 8, 8), (1, 2, 2), 2), 2, 1)
    return model, optimizer, batch


def _step(model, optimizer, batch, scaler):
    return train_step(model, batch, optimizer, scaler, RunContext(torch.device("cpu")), None,
                      PretrainConfig(datasets=("x",)), None, torch.Generator(), (1, 2))


@pytest.mark.parametrize("init_scale, counted", [(2.0, False), (0.5, True)])
def test_scaler_overflow_is_not_a_nonfinite_loss_until_the_scale_is_below_one(init_scale, counted):
    model, optimizer, batch = _step_setup()
    model.projector[0].weight.register_hook(lambda g: g * float("inf"))  # finite loss, overflowing gradient
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    before = [p.detach().clone() for p in model.parameters()]
    stats = _step(model, optimizer, batch, scaler)
    assert bool(stats["overflow"]) and torch.isfinite(stats["loss"])
    assert bool(stats["finite"]) == (not counted)  # at scale < 1 the gradients overflow although scaled down
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the update was skipped
    assert scaler.get_scale() == init_scale / 2


def test_scaler_counts_a_nonfinite_loss():
    model, optimizer, batch = _step_setup()
    batch["bases"][0, 0, 0, 0, 0, 0] = float("nan")
    stats = _step(model, optimizer, batch, torch.amp.GradScaler("cpu", init_scale=2.0))
    assert not bool(stats["finite"]) and not bool(stats["overflow"])


def test_scaler_step_trains_when_all_is_finite():
    model, optimizer, batch = _step_setup()
    before = model.projector[0].weight.detach().clone()
    stats = _step(model, optimizer, batch, torch.amp.GradScaler("cpu", init_scale=2.0))
    assert bool(stats["finite"]) and not bool(stats["overflow"])
    assert not torch.equal(before, model.projector[0].weight)


def test_pooling_projector_and_loss_run_in_fp32_under_autocast():
    model, _, batch = _step_setup()
    dtypes = {}
    for name in ("encoder", "projector", "teacher_projector"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: dtypes.__setitem__(name, (o[0] if isinstance(o, list) else o).dtype))
    with autocast(torch.device("cpu"), torch.bfloat16):
        out = model(batch["targets"], batch["bases"], batch["overlaps"])
        logits = model.position_logits(batch["targets"], batch["bases"])
    assert dtypes == {"encoder": torch.bfloat16, "projector": torch.float32, "teacher_projector": torch.float32}
    assert out["loss"].dtype == torch.float32 and logits.dtype == torch.float32


def test_pooling_keeps_fp32_resolution_of_bf16_maps():
    maps = [torch.randn(3, 4, 6, 6, 6).to(torch.bfloat16)]
    pooled = pool_stage_features(maps)
    exact = maps[0].double().flatten(2).mean(2)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled.double(), exact, rtol=1e-6, atol=1e-7)  # bf16 output would be off by ~4e-3
    assert (maps[0].flatten(2).mean(2).double() - exact).abs().max() > 1e-4  # what the old bf16 mean gave

