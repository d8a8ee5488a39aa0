"""Multi-process pre-training: torchrun with 2 CPU processes (gloo), as CI runs it (DESIGN.md section 7).

Checks that ranks draw different windows, that only rank 0 writes, that a 2-process run can be
preempted (SIGTERM to torchrun) and resumed with --c (preset v1: full EMA teacher under DDP without
``find_unused_parameters``), and that an error on one rank ends every rank instead of hanging.

Issue 18 (DESIGN.md section 9): two real gloo processes show that student and teacher projectors
normalise alike under DDP, that every rank evaluates its share of the held-out monitor and gets the
metrics one process gets, and that the ranks agree on stopping every few steps, not every step. The
CUDA branch of the process-group set-up (nccl bound to the GPU, timeout, gloo control group) cannot
run here; its arguments are checked with the calls recorded, and ``benchmarks/gpu_check.sh`` runs it.
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
import torch.multiprocessing as mp

from conftest import TOY_ID, TOY_NAME, nnunet_env
from nnunet_voco.nnunet import synthetic_datasets
from nnunet_voco.checkpoint import load_file
from nnunet_voco.nnunet.loader import VoCoStream
from nnunet_voco.nnunet import open_datasets
from nnunet_voco.pretrain import distributed
from nnunet_voco.pretrain.run_state import LATEST
from nnunet_voco.voco.loss import VoCoLoss
from nnunet_voco.voco.model import VoCoModel
from nnunet_voco.voco.monitor import FixedWindows, MonitorWindows, evaluate
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

# Runs voco_pretrain under torchrun and prints, per rank, the stop-flag all-reduces and monitor batches.
COUNTING_RANKS = textwrap.dedent("""
    import atexit, os, sys
    from nnunet_voco.pretrain import cli, distributed
    from nnunet_voco.voco import monitor

    counts = {"any_rank": 0, "monitor_batches": 0}
    any_rank, batches = distributed.RunContext.any_rank, monitor.FixedWindows.batches

    def counting_any_rank(self, *flags):
        counts["any_rank"] += 1
        return any_rank(self, *flags)

    def counting_batches(self, *args):
        for batch in batches(self, *args):
            counts["monitor_batches"] += 1
            yield batch

    distributed.RunContext.any_rank, monitor.FixedWindows.batches = counting_any_rank, counting_batches
    # one file per rank: lines the two processes print to one pipe can interleave
    atexit.register(lambda: open(os.path.join(os.path.dirname(__file__), f"counts_rank{os.environ['RANK']}"),
                                 "w").write(f"{counts['any_rank']} {counts['monitor_batches']}"))
    if __name__ == "__main__":
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
                             capture_output=True, encoding="utf-8", errors="replace", timeout=900)
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
    proc = subprocess.run(torchrun([str(tmp_path / "faulty_rank.py")], argv), env=toy, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=600)
    assert proc.returncode != 0
    assert "injected fault on rank 1" in proc.stdout + proc.stderr
    assert not os.path.exists(tmp_path / "run" / LATEST)


def _gloo_rank(rank: int, world: int, port: int, env: dict, folder: str) -> None:
    """One rank of :func:`test_two_gloo_ranks_normalise_alike_and_share_the_monitor` (a spawned process)."""
    os.environ.update(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from test_model import tiny_bundle

    ctx = distributed.init_context("cpu")
    result = {"local_world_size": ctx.local_world_size}
    try:
        torch.manual_seed(0)  # the same weights on every rank, as DDP keeps them
        model = VoCoModel(tiny_bundle(), "v2", VoCoLoss("v2"), head_dim=16, embedding_dropout=0.0)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        seen = {}
        model.projector.register_forward_hook(lambda m, i, o: seen.__setitem__("student", o.detach()))
        model.teacher_projector.register_forward_hook(lambda m, i, o: seen.__setitem__("teacher", o.detach()))
        gen = torch.Generator().manual_seed(rank + 1)  # each rank its own batch, so per-rank statistics differ
        targets, bases = torch.randn(2, 2, 1, 8, 8, 8, generator=gen), torch.randn(2, 4, 1, 8, 8, 8, generator=gen)
        ddp(targets, bases, torch.softmax(torch.randn(2, 2, 4, generator=gen), -1))["loss"].backward()
        result["norm_types"] = [[type(m).__name__ for m in p if "Norm" in type(m).__name__]
                                for p in (model.projector, model.teacher_projector)]
        result["student_minus_teacher"] = float((seen["student"] - seen["teacher"]).abs().max())

        sources = open_datasets(["983"], "nnUNetResEncUNetMPlans", "3d_fullres")
        sampler = WindowSampler(sources, CropLayout((8, 16, 16), (1, 2, 2), 2), 0.5)
        windows = MonitorWindows(FixedWindows(sampler, 5, seed=1), FixedWindows(sampler, 5, seed=2))
        shared = evaluate(model, windows, 2, ctx.device, ctx.rank, ctx.world_size, ctx.all_gather)
        alone = evaluate(model, windows, 2, ctx.device)  # every batch on this rank: the one-process value
        result["monitor_shared"] = {k: v for k, v in shared.items() if k != "val_seconds"}
        result["monitor_alone"] = {k: v for k, v in alone.items() if k != "val_seconds"}
        result["any_rank"] = ctx.any_rank(rank == 1, False)
        result["gathered"] = ctx.all_gather(rank * 10)
    finally:
        ctx.close()
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


@pytest.mark.slow  # two spawned interpreters: ~15 s idle, ~1 min on a busy 2-core machine
def test_two_gloo_ranks_normalise_alike_and_share_the_monitor(tmp_path, monkeypatch):
    folders = synthetic_datasets.nnunet_folders(str(tmp_path / "nn"))
    plans = synthetic_datasets.synthetic_plans("Tiny", (8, 16, 16), (4, 8, 16), ((1, 1, 1), (1, 2, 2), (2, 2, 2)),
                                               (1, 1, 1))
    synthetic_datasets.write_synthetic_dataset(folders["nnUNet_preprocessed"], 983, "Tiny", plans, 2, (12, 40, 40))
    mp.start_processes(_gloo_rank, args=(2, _free_port(), folders, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    for r in ranks:
        # student and teacher projectors: the same norm layers, hence the same output for the same input and
        # weights (the step-0 teacher is a copy); CPU ranks keep per-rank statistics in both (no SyncBatchNorm)
        assert r["norm_types"][0] == r["norm_types"][1] == ["BatchNorm1d", "BatchNorm1d"]
        assert r["student_minus_teacher"] == 0.0
        # each rank evaluated half of the monitor's batches; the gathered metrics are the one-process metrics
        assert r["monitor_shared"] == r["monitor_alone"] and r["monitor_shared"]["val_targets"] == 5 * 4
        assert r["any_rank"] == [True, False] and r["gathered"] == [0, 10] and r["local_world_size"] == 2
    assert ranks[0]["monitor_shared"] == ranks[1]["monitor_shared"]


def test_sync_batchnorm_conversion_covers_student_and_teacher():
    """The CUDA branch converts both projectors (on CPU the conversion itself runs; the forward needs a GPU)."""
    from test_model import tiny_bundle

    model = VoCoModel(tiny_bundle(), "v2", VoCoLoss("v2"), head_dim=16)
    model.convert_sync_batchnorm()
    for projector in (model.projector, model.teacher_projector):
        norms = [m for m in projector if "Norm" in type(m).__name__]
        assert len(norms) == 2 and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
        assert all(not m.affine and not m.track_running_stats for m in norms)
    assert not any(p.requires_grad for p in model.teacher_projector.parameters())
    model.update_teacher(0.5)  # the EMA still pairs the two projectors' parameters


def test_cuda_process_group_is_bound_to_the_gpu_with_a_timeout(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: calls.append(("init", a, k)))
    monkeypatch.setattr(distributed.dist, "new_group", lambda **k: calls.append(("new_group", k)) or "gloo-group")
    for key, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    ctx = distributed.init_context("cuda")
    timeout = distributed.COLLECTIVE_TIMEOUT
    assert calls == [("set_device", 1), ("init", ("nccl",), {"device_id": torch.device("cuda", 1), "timeout": timeout}),
                     ("new_group", {"backend": "gloo", "timeout": timeout})]
    assert (ctx.device, ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size, ctx.control_group) == (
        torch.device("cuda", 1), 3, 4, 1, 2, "gloo-group")
    assert timeout.total_seconds() > 600  # beyond NCCL's 10-minute watchdog default


@pytest.mark.slow
def test_two_processes_agree_on_stopping_every_few_steps_and_share_the_monitor(toy, tmp_path):
    (tmp_path / "counting.py").write_text(COUNTING_RANKS)
    out = tmp_path / "run"
    argv = ["-d", str(TOY_ID), "-o", str(out), "--num_steps", "12", "--val_every", "6", "--val_windows", "6",
            "--save_every", "100"] + FAST + ["--log_every", "4"]
    proc = subprocess.run(torchrun([str(tmp_path / "counting.py")], argv), env=toy, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    counts = {rank: tuple(map(int, (tmp_path / f"counts_rank{rank}").read_text().split())) for rank in (0, 1)}
    # the folder claim, then steps 4, 8 and 12 (every --log_every = 4 <= 10 steps), not 12 all-reduces
    assert counts[0][0] == counts[1][0] == 1 + 3
    # 3 evaluations (steps 0, 6, 12) x 2 window sets x 3 batches of 2 volumes, shared out over the ranks
    assert counts[0][1] + counts[1][1] == 3 * 2 * 3 and counts[1][1] > 0
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if "val_position_accuracy" in r] == [0, 6, 12]  # written once, by rank 0


@pytest.mark.slow
def test_two_nodes_meet_at_a_c10d_rendezvous(toy, tmp_path):
    """The README's multi-node command on one machine: two torchrun agents, one rank each, meet at a c10d
    rendezvous as two nodes would (``--nnodes 2 --rdzv_backend c10d``); the run is one 2-rank job."""
    out = tmp_path / "run"
    port = _free_port()
    argv = ["-m", "nnunet_voco.pretrain.cli", "-d", str(TOY_ID), "-o", str(out), "--num_steps", "3",
            "--save_every", "100", "--val_cases", "1", "--val_windows", "2"] + FAST
    node = [TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
            f"127.0.0.1:{port}", "--rdzv_id", "voco-test"]
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen(node + argv, env=toy, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    codes = [p.wait(timeout=900) for p in procs]
    text = [(tmp_path / f"node{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], text[0][-3000:] + text[1][-3000:]
    assert json.load(open(out / "config.json"))["world_size"] == 2
    assert [r["step"] for r in _rows(out)] == [1, 2, 3]  # one job: each step logged once
    assert sum(t.count("VoCo: finished 3 steps") for t in text) == 1  # by the rank-0 node alone
