"""Runs ``voco_demo``: the stages of :mod:`nnunet_voco.demo.stages` in order, re-entrantly, then the report.

Each stage prints a banner and the command a user would type, then streams the command's output (also
kept in ``<work>/<run size>/logs/<stage>.log``). A stage whose outputs exist is reused, with "reusing"
in the banner; ``<work>/<run size>/demo_state.json`` keeps the wall and CPU time of the run that made
them, so the table of a second call still shows what each stage cost.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from nnunet_voco.demo.arms import ARMS
from nnunet_voco.demo.folders import DemoFolders
from nnunet_voco.demo.phantom import SYNTHETIC_NOTE
from nnunet_voco.demo.report import write_report
from nnunet_voco.demo.run_sizes import RUN_SIZES
from nnunet_voco.demo.stages import Stage, build_stages
from nnunet_voco.storage.atomic_files import write_json_atomic


def _executable(name: str) -> str:
    """The console script of this interpreter's environment (the venv need not be activated)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.isfile(path) else name


def stream_command(command: list[str], env: dict, log_path: str) -> int:
    """Runs ``command``, copying its output live to stdout and to ``log_path``.

    Args:
        command: The command line; its first item is looked up next to the running interpreter.
        env: Environment of the subprocess.
        log_path: File that receives the full output (appended).

    Returns:
        The exit code of the command.
    """
    out = getattr(sys.stdout, "buffer", None)
    with open(log_path, "ab") as log, subprocess.Popen([_executable(command[0]), *command[1:]], env=env,
                                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
            log.write(chunk)
            if out is not None:  # raw bytes keep tqdm's carriage returns: one live progress line
                out.write(chunk)
                out.flush()
            else:
                print(chunk.decode(errors="replace"), end="", flush=True)
        return proc.wait()


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (stages may run in either)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _run_one(stage: Stage, fresh: bool, env: dict, log_path: str) -> None:
    command = stage.command(fresh)
    print("$ " + shlex.join(command), flush=True)
    if stage.action is not None:
        stage.action()
        return
    code = stream_command(command, env, log_path)
    if code != 0:
        raise RuntimeError(f"stage {stage.key} failed with exit code {code}: {shlex.join(command)}; the full output "
                           f"is in {log_path}. Fix the cause and run voco_demo again: finished stages are reused")
    if not stage.is_done():
        raise RuntimeError(f"stage {stage.key} exited 0 but its outputs are missing; see {log_path}")


def run_stages(stages: list[Stage], folders: DemoFolders, state: dict) -> dict:
    """Runs or reuses each stage in order and records its cost in ``state``.

    A stage is reused when its outputs exist and no stage it needs ran in this call; otherwise it runs
    (continuing an interrupted pre-training or training, or starting over when an input changed).

    Args:
        stages: From :func:`nnunet_voco.demo.stages.build_stages`.
        folders: The run size's folders (logs go to ``<run>/logs``).
        state: ``{"stages": {key: {...}}}`` from :func:`load_state`; saved after every stage.

    Returns:
        ``state``; per stage ``wall_s``, ``cpu_s`` and ``load_avg`` (1-minute load average at its end:
        other work on the machine) of the run that made its outputs (absent when they came from
        elsewhere), and ``reused`` (True when this call reused them).

    Raises:
        RuntimeError: A command failed or left no outputs; the message names its log file.
    """
    env, ran = folders.environment(), set()
    os.makedirs(os.path.join(folders.run, "logs"), exist_ok=True)
    for i, stage in enumerate(stages, 1):
        fresh = any(n in ran for n in stage.needs)
        record = state["stages"].setdefault(stage.key, {})
        banner = f"\n==> [{i}/{len(stages)}] {stage.key}: {stage.title}"
        if not fresh and stage.is_done():
            print(f"{banner} -- reusing the outputs of an earlier run", flush=True)
            record["reused"] = True
        else:
            print(banner, flush=True)
            start, cpu0 = time.perf_counter(), _cpu_s()
            _run_one(stage, fresh, env, os.path.join(folders.run, "logs", f"{stage.key}.log"))
            record.update(wall_s=round(time.perf_counter() - start, 1), cpu_s=round(_cpu_s() - cpu0, 1),
                          load_avg=round(os.getloadavg()[0], 1), reused=False,
                          finished_at=time.strftime("%Y-%m-%d %H:%M:%S"))
            ran.add(stage.key)
            print(f"==> {stage.key} done in {record['wall_s']:.0f} s", flush=True)
        if stage.after is not None:
            print(stage.after(), flush=True)
        save_state(folders, state)
    return state


def load_state(folders: DemoFolders) -> dict:
    """Reads ``<run>/demo_state.json`` (timings of earlier runs), or returns an empty state."""
    path = os.path.join(folders.run, "demo_state.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {"stages": {}}


def save_state(folders: DemoFolders, state: dict) -> None:
    """Writes ``state`` to ``<run>/demo_state.json`` atomically (its folder is created if missing)."""
    write_json_atomic(os.path.join(folders.run, "demo_state.json"), state)


def _describe(folders: DemoFolders, device: str) -> str:
    p, env = folders.run_size, folders.environment()
    names = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_def_n_proc", "nnUNet_n_proc_DA",
             "nnUNet_compile")
    exports = " ".join(f"{k}={shlex.quote(env[k])}" for k in names)
    arms = ", ".join(f"{folders.trainer(a)} ({label})" for a, (_, label) in ARMS.items())
    return (f"{SYNTHETIC_NOTE}\n"
            f"Preset {p.name!r} on {device}: phantom {'x'.join(map(str, p.shape))} voxels (z, y, x); "
            f"{len(p.train_seeds)} labelled training cases, {len(p.heldout_seeds)} held-out labelled cases (nnU-Net's "
            f"validation cases), {len(p.unlabelled_seeds)} unlabelled pool images for pre-training (of which "
            f"{p.val_cases} held out for the position monitor); VoCo pre-training {p.pretrain_steps} steps (lr "
            f"{p.pretrain_lr:g}) on crops {'x'.join(map(str, p.crop_size))} (grid {'x'.join(map(str, p.grid))}); "
            f"then {arms}, each with seeds (folds) {', '.join(map(str, p.seeds))}.\n"
            f"Every command below runs with:\n  export {exports}")


def run_demo(work: str, run_size: str = "default", device: str = "cpu") -> dict:
    """Runs (or resumes) the whole demo and writes its report.

    Args:
        work: Work folder; created if missing. nnU-Net's three folders live inside it.
        run_size: A key of :data:`nnunet_voco.demo.run_sizes.RUN_SIZES` ("default" or "quick").
        device: ``cpu`` or ``cuda`` for pre-training and training.

    Returns:
        The results dictionary also written to ``<work>/<run size>/results.json``.

    Raises:
        ValueError: Unknown run size.
        RuntimeError: A stage failed (see :func:`run_stages`).
    """
    if run_size not in RUN_SIZES:
        raise ValueError(f"unknown demo run size {run_size!r}; choose one of {sorted(RUN_SIZES)}")

    folders = DemoFolders(work, RUN_SIZES[run_size])
    print(_describe(folders, device), flush=True)
    start = time.perf_counter()
    state = run_stages(build_stages(folders, device), folders, load_state(folders))
    results = write_report(folders, state, device)
    print(f"\nvoco_demo finished in {time.perf_counter() - start:.0f} s", flush=True)
    return results
