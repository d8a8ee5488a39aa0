"""Multi-process pre-training: torchrun with 2 CPU processes (gloo), as CI runs it (DESIGN.md section 7).

Checks that ranks draw different windows, that only rank 0 writes, that a 2-process run can be
preempted (SIGTERM to torchrun) and resumed with --c (preset v1: full EMA teacher under DDP without
``find_unused_parameters``), and that an error on one rank ends every rank instead of hanging.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import TOY_ID, TOY_NAME, nnunet_env
from nnunet_voco.checkpoint import load_file
from nnunet_voco.nnunet.loader import VoCoStream
from nnunet_voco.nnunet import open_datasets
from nnunet_voco.pretrain.run_state import LATEST
from nnunet_voco.voco.sampling import CropLayout, WindowSampler

FAST = ["-device", "cpu", "--crop_size", "8", "16", "16", "--batch_size", "2", "--head_dim", "64", "--log_every", "1",
        "--num_workers", "0"]
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")

# Runs voco_pretrain under torchrun; rank 1 fails in its second forward pass.
FAULTY_RANK = textwrap.dedent("""
    import os, sys
    from nnunet_voco.voco.model import VoCoModel
    from nnunet_voco.pretrain import cli

    if os.environ["RANK"] == "1":
        forward, calls = VoCoModel.forward, []

        def failing_forward(self, *args):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("injected fault on rank 1")
            return forward(self, *args)

        VoCoModel.forward = failing_forward
    sys.exit(cli.main())
""")


@pytest.fixture(scope="module")
def toy(planned_toy, tmp_path_factory) -> dict:
    """A private nnU-Net tree with a copy of the planned toy dataset; one thread per process."""
    env = nnunet_env(str(tmp_path_factory.mktemp("ddp")))
    shutil.copytree(os.path.join(planned_toy["nnUNet_preprocessed"], TOY_NAME),
                    os.path.join(env["nnUNet_preprocessed"], TOY_NAME))
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(entry: list[str], argv: list[str]) -> list[str]:
    return [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port())] \
        + entry + argv


def _rows(folder) -> list[dict]:
    path = os.path.join(folder, "metrics.jsonl")
    rows = [json.loads(line) for line in open(path) if line.endswith("}\n")] if os.path.isfile(path) else []
    return [r for r in rows if "loss" in r]  # training rows (held-out monitor rows have no loss)


def test_ranks_draw_different_windows(toy, monkeypatch):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, toy[key])
    sampler = WindowSampler(open_datasets([str(TOY_ID)], "nnUNetPlans", "3d_fullres"), CropLayout((8, 16, 16),
                                                                                                   (1, 3, 3), 2))

    def first(rank: int, start_step: int = 0) -> list[torch.Tensor]:
        stream = iter(VoCoStream(sampler, seed=0, rank=rank, start_step=start_step))
        return [next(stream)["bases"] for _ in range(4)]

    rank0, rank1, rank0_again, rank0_resumed = first(0), first(1), first(0), first(0, start_step=10)
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank0_again))  # reproducible per rank
    assert not any(torch.equal(a, b) for a, b in zip(rank0, rank1))  # but never the same windows across ranks
    assert not any(torch.equal(a, b) for a, b in zip(rank0, rank0_resumed))  # nor replayed after a resume


@pytest.mark.slow
def test_two_processes_only_rank0_writes_and_a_preempted_run_resumes(toy, tmp_path):
    out = tmp_path / "run"
    argv = ["-d", str(TOY_ID), "-o", str(out), "--preset", "v1", "--save_every", "100"] + FAST
    entry = ["-m", "nnunet_voco.pretrain.cli"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(torchrun(entry, argv + ["--num_steps", "40"]), env=toy, stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900  # guards hangs only
    while not (_rows(out) and _rows(out)[-1]["step"] >= 2) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks; they agree on the step to stop at
    proc.wait(timeout=600)
    first = (tmp_path / "first.log").read_text()
    assert first.count("VoCo: interrupted by signal 15 at step") == 1, first[-4000:]
    step = load_file(str(out / LATEST))["step"]
    assert step >= 2

    resumed = subprocess.run(torchrun(entry, argv + ["--num_steps", str(step + 2), "--c"]), env=toy,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert resumed.stdout.count(f"VoCo: continuing from {out / LATEST} at step {step}") == 1  # rank 0 only
    assert [r["step"] for r in _rows(out)] == list(range(1, step + 3))  # each step once
    assert len(glob.glob(str(out / "training_log_*.txt"))) == 2  # one per run, none from rank 1
    assert json.load(open(out / "config.json"))["world_size"] == 2
    assert load_file(str(out / "checkpoint_final.pth"))["step"] == step + 2


@pytest.mark.slow
def test_an_error_on_one_rank_ends_every_rank(toy, tmp_path):
    (tmp_path / "faulty_rank.py").write_text(FAULTY_RANK)
    argv = ["-d", str(TOY_ID), "-o", str(tmp_path / "run"), "--num_steps", "5"] + FAST
    # Before the fix rank 1 waited in a barrier while rank 0 waited in the gradient all-reduce: a hang
    # until gloo's 30-minute timeout. The timeout below only turns such a hang into a failure.
    proc = subprocess.run(torchrun([str(tmp_path / "faulty_rank.py")], argv), env=toy, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0
    assert "injected fault on rank 1" in proc.stdout + proc.stderr
    assert not os.path.exists(tmp_path / "run" / LATEST)
