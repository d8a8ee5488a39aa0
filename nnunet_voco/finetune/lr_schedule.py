"""Fine-tuning learning-rate schedule: linear warm-up, then nnU-Net's poly decay, per parameter group.

A pretrained encoder under a randomly initialised decoder meets large, noisy gradients in the first
epochs; nnU-Net's SGD (lr 1e-2, Nesterov momentum 0.99) at full strength from epoch 0 can overwrite
much of what pre-training learned before the decoder has become useful. Warming the learning rate
up linearly (and, optionally, keeping the encoder frozen for the first epochs: "decoder first")
protects the pretrained features; afterwards the schedule is exactly nnU-Net's
``initial_lr * (1 - progress) ** 0.9``. Stepped once per epoch, like nnU-Net's ``PolyLRScheduler``.
"""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import _LRScheduler


def warmup_poly_factor(epoch: int, num_epochs: int, warmup_epochs: int, exponent: float = 0.9) -> float:
    """Multiplier of the initial learning rate at ``epoch`` (0-based).

    ``(epoch + 1) / warmup_epochs`` during the warm-up, then nnU-Net's poly decay over the remaining
    epochs: ``(1 - (epoch - warmup) / (num_epochs - warmup)) ** exponent``.
    """
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    span = max(num_epochs - warmup_epochs, 1)
    return max(0.0, 1.0 - (epoch - warmup_epochs) / span) ** exponent


class WarmupPolyLRScheduler(_LRScheduler):
    """Warm-up + poly for every parameter group; groups named ``"encoder"`` can start late.

    Args:
        optimizer: optimiser whose groups carry a ``"name"`` key (``"encoder"`` / ``"decoder"``).
        initial_lr: peak learning rate.
        num_epochs: total epochs.
        warmup_epochs: linear warm-up length.
        decoder_first_epochs: epochs during which the encoder group's learning rate is 0.
        encoder_lr_scale: factor on the encoder group's learning rate afterwards.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, num_epochs: int, warmup_epochs: int,
                 decoder_first_epochs: int = 0, encoder_lr_scale: float = 1.0):
        self.initial_lr, self.num_epochs, self.warmup_epochs = initial_lr, num_epochs, warmup_epochs
        self.decoder_first_epochs, self.encoder_lr_scale = decoder_first_epochs, encoder_lr_scale
        self.ctr = 0
        super().__init__(optimizer, -1)

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step, self.ctr = self.ctr, self.ctr + 1
        lr = self.initial_lr * warmup_poly_factor(current_step, self.num_epochs, self.warmup_epochs)
        for group in self.optimizer.param_groups:
            if group.get("name") == "encoder":
                group["lr"] = 0.0 if current_step < self.decoder_first_epochs else lr * self.encoder_lr_scale
            else:
                group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return self._last_lr
