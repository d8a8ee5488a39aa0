"""EMA updates and the pre-training / fine-tuning learning-rate schedules."""
import math

import pytest
import torch

from nnunet_voco.voco.ema import make_teacher, momentum_at, update_ema
from nnunet_voco.finetune.lr_schedule import WarmupPolyLRScheduler, warmup_poly_factor
from nnunet_voco.voco.schedule import lr_at


@pytest.mark.parametrize("m", [0.0, 0.5, 1.0])
def test_update_ema(m):
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = teacher.weight.detach().clone()
    update_ema(student, teacher, m)
    torch.testing.assert_close(teacher.weight, m * before + (1 - m) * student.weight.detach())


def test_teacher_is_a_gradient_free_copy():
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    for a, b in zip(student.state_dict().values(), teacher.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("step, expected", [(0, 1e-4 / 10), (9, 1e-4), (10, 1e-4), (55, 1e-4 * 0.5), (100, 0.0), (500, 0.0)])
def test_lr_warmup_then_cosine(step, expected):
    assert lr_at(step, 1e-4, 10, 100) == pytest.approx(expected, abs=1e-12)


def test_momentum_schedule():
    assert momentum_at(5, 100, 0.9) == 0.9
    assert momentum_at(0, 101, 0.9, 0.99) == pytest.approx(0.9)
    assert momentum_at(100, 101, 0.9, 0.99) == pytest.approx(0.99)
    assert momentum_at(50, 101, 0.9, 0.99) == pytest.approx(0.945)


@pytest.mark.parametrize("epoch, expected", [(0, 0.1), (9, 1.0), (10, 1.0), (55, 0.5 ** 0.9), (100, 0.0)])
def test_finetune_warmup_poly(epoch, expected):
    assert warmup_poly_factor(epoch, 100, 10) == pytest.approx(expected)


def test_decoder_first_freezes_encoder_group():
    enc, dec = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([{"name": "encoder", "params": enc.parameters()}, {"name": "decoder", "params": dec.parameters()}],
                          lr=1e-2)
    sched = WarmupPolyLRScheduler(opt, 1e-2, 100, 4, decoder_first_epochs=2, encoder_lr_scale=0.5)
    sched.step(1)
    assert [g["lr"] for g in opt.param_groups] == [0.0, pytest.approx(1e-2 * 2 / 4)]
    sched.step(3)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.5e-2), pytest.approx(1e-2)]
    sched.step(52)
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-2 * (1 - 48 / 96) ** 0.9)
    assert not math.isnan(opt.param_groups[0]["lr"])
