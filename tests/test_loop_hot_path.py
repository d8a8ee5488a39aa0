"""The real loop is the fast loop (issue 18, items 3 and 4; DESIGN.md section 9).

* Host reads happen inside the loop's step timer: a slow device read (the CUDA sync at a log step,
  stood in for by a sleep in the read) lands in the row's ``seconds`` and lowers its data-wait share;
  a slow loader raises it.
* ``cudnn.benchmark`` is set on CUDA, with ``--no_cudnn_benchmark`` as the opt-out.
* v2 with one volume per process warns once, naming what to pass.
"""
from __future__ import annotations

import json
import os
import sys
import time

import pytest
import torch

from conftest import open_tiny_synthetic  # noqa: E402
from nnunet_voco.nnunet.synthetic_datasets import RESENC_M_PLANS  # noqa: E402
from nnunet_voco.nnunet.loader import VoCoStream  # noqa: E402
from nnunet_voco.pretrain import cli, loop  # noqa: E402
from nnunet_voco.pretrain.config import PretrainConfig  # noqa: E402
from nnunet_voco.pretrain.distributed import configure_backends  # noqa: E402
from nnunet_voco.pretrain.run_setup import V2_ONE_VOLUME_WARNING, one_volume_warning  # noqa: E402

@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    open_tiny_synthetic(tmp_path / "nn", monkeypatch, 984, 2)  # 3-stage ResEnc, 12x40x40 cases
    out = tmp_path / "run"
    argv = ["-d", "984", "-p", RESENC_M_PLANS, "-device", "cpu", "--crop_size", "8", "16", "16", "--head_dim",
            "16", "--num_workers", "0", "--val_cases", "0", "-o", str(out), "--num_steps", "6", "--log_every", "3"]
    return argv, out


def _rows(out) -> list[dict]:
    return [r for r in (json.loads(line) for line in open(out / "metrics.jsonl")) if "loss" in r]


def test_the_host_read_is_inside_the_step_timer(tiny_run, monkeypatch):
    argv, out = tiny_run
    read = loop._read_window
    monkeypatch.setattr(loop, "_read_window", lambda window: time.sleep(0.6) or read(window))
    assert cli.main(argv + ["--batch_size", "2"]) == 0
    rows = _rows(out)
    assert [r["step"] for r in rows] == [3, 6]
    assert all(r["seconds"] >= 0.6 for r in rows)  # the read's wait is the window's time...
    assert all(r["data_wait_share"] < 0.5 for r in rows)  # ...and not data wait


def test_a_slow_loader_shows_as_data_wait(tiny_run, monkeypatch):
    argv, out = tiny_run
    make = VoCoStream.make_sample
    monkeypatch.setattr(VoCoStream, "make_sample", lambda self, *a: time.sleep(0.3) or make(self, *a))
    assert cli.main(argv + ["--batch_size", "2"]) == 0
    for row in _rows(out):  # 2 volumes x 0.3 s per step against a few ms of tiny-model compute
        assert row["data_wait_share"] > 0.5 and row["seconds"] >= 3 * 0.6


def test_v2_with_one_volume_warns_once_in_the_log(tiny_run, capsys):
    argv, out = tiny_run
    assert cli.main(argv + ["--batch_size", "1", "--num_steps", "1"]) == 0
    log = "".join(open(os.path.join(out, f)).read() for f in os.listdir(out) if f.startswith("training_log_"))
    assert log.count(V2_ONE_VOLUME_WARNING) == 1 and capsys.readouterr().out.count(V2_ONE_VOLUME_WARNING) == 1


@pytest.mark.parametrize("preset, batch, inter, warns", [
    ("v2", 1, 1.0, True), ("v2", 2, 1.0, False), ("v2", 1, 0.0, False), ("v1", 1, 1.0, False)])
def test_one_volume_rule(preset, batch, inter, warns):
    config = PretrainConfig(datasets=("x",), preset=preset, inter_weight=inter)
    assert (one_volume_warning(config, batch) is not None) == warns
    assert "--batch_size 2 or more" in V2_ONE_VOLUME_WARNING


def test_cudnn_benchmark_on_cuda_with_an_opt_out(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_backends(torch.device("cpu"), True)
    assert torch.backends.cudnn.benchmark is False  # CPU: untouched
    configure_backends(torch.device("cuda"), True)
    assert torch.backends.cudnn.benchmark is True
    configure_backends(torch.device("cuda"), False)
    assert torch.backends.cudnn.benchmark is False
    parse = cli.build_parser().parse_args
    assert cli.config_from_args(parse(["-d", "1"])).cudnn_benchmark is True
    assert cli.config_from_args(parse(["-d", "1", "--no_cudnn_benchmark"])).cudnn_benchmark is False
