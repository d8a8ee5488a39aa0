"""``--compile`` runs resume (issue 18, item 1; DESIGN.md section 9: wrappers come after loading and
are gone before saving).

Before the fix the compiled encoder replaced ``model.encoder``, checkpoints held
``encoder._orig_mod.*`` keys, and ``--c`` failed with "does not fit this model and optimiser".
The fast tests drive the real command in-process with ``torch.compile(backend="eager")`` (dynamo
traces the encoder, no C++ is built: seconds instead of a minute); the slow test uses inductor.
"""
from __future__ import annotations

import glob
import json
import os

import pytest
import torch

from conftest import open_tiny_synthetic  # noqa: E402
from nnunet_voco.nnunet.synthetic_datasets import RESENC_M_PLANS  # noqa: E402
from conftest import PRETRAIN_FAST, TOY_ID, run  # noqa: E402
from nnunet_voco.checkpoint import load_file  # noqa: E402
from nnunet_voco.pretrain import cli, run_state  # noqa: E402
from nnunet_voco.voco.loss import VoCoLoss  # noqa: E402
from nnunet_voco.voco.model import VoCoModel  # noqa: E402
from test_model import tiny_bundle  # noqa: E402

@pytest.fixture
def tiny_dataset(tmp_path, monkeypatch):
    open_tiny_synthetic(tmp_path / "nn", monkeypatch, 983, 3)  # 3-stage ResEnc, 12x40x40 cases
    return ["-d", "983", "-p", RESENC_M_PLANS, "-device", "cpu", "--crop_size", "8", "16", "16", "--batch_size",
            "2", "--head_dim", "32", "--num_workers", "0", "--log_every", "1", "--save_every", "1"]


@pytest.fixture
def eager_compile(monkeypatch):
    """``torch.compile`` with dynamo's eager backend; counts the calls of the compiled encoder."""
    calls = []
    compile_ = torch.compile

    def compiling(module, **kwargs):  # a real OptimizedModule, as torch.compile returns
        compiled = compile_(module, backend="eager")
        compiled.register_forward_pre_hook(lambda *args: calls.append(1))
        return compiled

    monkeypatch.setattr(torch, "compile", compiling)
    return calls


def _wrapped_keys(path: str) -> list[str]:
    state = load_file(path)
    tensors = state.get("model") or state.get("encoder") or state.get("network_weights")
    return [k for k in tensors if "_orig_mod" in k or k.startswith("module.")]


def _assert_plain_files(folder) -> None:
    files = glob.glob(os.path.join(folder, "*.pth"))
    assert {os.path.basename(f) for f in files} >= {run_state.LATEST, run_state.FINAL, "voco_encoder.pth"}
    for path in files:
        assert _wrapped_keys(path) == [], path


def test_compiled_encoder_stays_out_of_the_state_dict_and_the_monitor():
    calls = []
    model = VoCoModel(tiny_bundle(), "v2", VoCoLoss("v2"), head_dim=16)
    keys = list(model.state_dict())
    compiled = torch.compile(model.encoder, backend="eager")
    model.compile_encoder(lambda m: lambda x: calls.append(1) or compiled(x))
    targets, bases = torch.randn(2, 2, 1, 8, 8, 8), torch.randn(2, 4, 1, 8, 8, 8)
    model(targets, bases, torch.softmax(torch.randn(2, 2, 4), -1))["loss"].backward()
    assert model.compiled and len(calls) == 1  # the training forward ran the compiled encoder
    model.position_logits(targets, bases)
    assert len(calls) == 1  # the monitor's eval pass did not (no recompilation for its shapes)
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("first, second, third", [(True, True, False), (False, True, True)])
def test_resume_with_and_without_compile(tiny_dataset, eager_compile, tmp_path, first, second, third):
    out = str(tmp_path / "run")
    base = tiny_dataset + ["-o", out, "--val_cases", "0"]
    flags = {True: ["--compile"], False: []}
    assert cli.main(base + flags[first] + ["--num_steps", "2"]) == 0
    assert bool(eager_compile) == first
    _assert_plain_files(out)
    assert cli.main(base + flags[second] + ["--num_steps", "3", "--c"]) == 0
    assert cli.main(base + flags[third] + ["--num_steps", "4", "--c"]) == 0
    _assert_plain_files(out)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # each step once, across the three runs
    assert load_file(os.path.join(out, run_state.FINAL))["step"] == 4


def test_a_state_written_with_orig_mod_keys_still_resumes(tiny_dataset, tmp_path):
    """States written before the fix (``encoder._orig_mod.*``) load: the keys are made plain on load."""
    out = str(tmp_path / "run")
    base = tiny_dataset + ["-o", out, "--val_cases", "0"]
    assert cli.main(base + ["--num_steps", "2"]) == 0
    latest = os.path.join(out, run_state.LATEST)
    state = load_file(latest)
    state["model"] = {k.replace("encoder.", "encoder._orig_mod.", 1) if k.startswith("encoder.") else k: v
                      for k, v in state["model"].items()}
    torch.save(state, latest)
    assert _wrapped_keys(latest)
    assert cli.main(base + ["--num_steps", "3", "--c"]) == 0
    _assert_plain_files(out)


def test_plain_keys_strips_wrapper_segments_only():
    state = {"module.encoder._orig_mod.stages.0.all_modules.0.weight": 1, "projector.0.weight": 2,
             "encoder.module_list.0": 3}
    assert list(run_state.plain_keys(state)) == ["encoder.stages.0.all_modules.0.weight", "projector.0.weight",
                                                 "encoder.module_list.0"]


@pytest.mark.slow  # inductor builds C++ on the CPU: ~15-40 s per compiled run here
def test_inductor_compiled_run_resumes_and_exports_plain_keys(planned_toy, tmp_path):
    """The issue's reproduction through the real command: ``--compile`` 2 steps, ``--compile --c``,
    then ``--c`` without compile; no checkpoint or export carries ``_orig_mod.``."""
    out = str(tmp_path / "run")
    argv = ["voco_pretrain", "-d", str(TOY_ID), "-o", out, "--val_cases", "0", "--save_every", "1"] + PRETRAIN_FAST
    run(argv + ["--compile", "--num_steps", "2"], planned_toy)
    resumed = run(argv + ["--compile", "--num_steps", "3", "--c"], planned_toy)
    assert f"continuing from {os.path.join(out, run_state.LATEST)} at step 2" in resumed.stdout
    run(argv + ["--num_steps", "4", "--c"], planned_toy)
    _assert_plain_files(out)
    assert load_file(os.path.join(out, run_state.FINAL))["step"] == 4
