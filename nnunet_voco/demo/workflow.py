"""Runs ``voco_demo``: the stages of :mod:`nnunet_voco.demo.stages` in order, re-entrantly, then the report.

Each stage prints one line: its number, the command a user would type and, when it ends, its wall
time (or "reused"). The command's own output goes to ``<work>/<run size>/logs/<stage>.log``;
``--verbose`` also streams it to the terminal, and a failed stage prints the tail of its log. A stage
whose outputs exist is reused; ``<work>/<run size>/demo_state.json`` keeps the wall and CPU time of
the run that made them, so the table of a second call still shows what each stage cost. After a
stage, files that neither a re-run nor the report need are removed (``Stage.tidy``). Run sizes with
``jobs > 1`` (the GPU demo) run independent training stages side by side.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import time

from nnunet_voco.demo.arms import ARMS
from nnunet_voco.demo.folders import DemoFolders, disk_usage
from nnunet_voco.demo.phantom import SYNTHETIC_NOTE
from nnunet_voco.demo.report import write_report
from nnunet_voco.demo.run_sizes import RUN_SIZES
from nnunet_voco.demo.stages import Stage, build_stages
from nnunet_voco.storage.atomic_files import write_json_atomic


def _executable(name: str) -> str:
    """The console script of this interpreter's environment (the venv need not be activated)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.isfile(path) else name


def stream_command(command: list[str], env: dict, log_path: str, echo: bool = False) -> int:
    """Runs ``command`` with its output appended to ``log_path`` and, with ``echo``, copied live to stdout.

    Args:
        command: The command line; its first item is looked up next to the running interpreter.
        env: Environment of the subprocess.
        log_path: File that receives the full output (appended).
        echo: Also stream the output to stdout (``voco_demo --verbose``).

    Returns:
        The exit code of the command.
    """
    out = getattr(sys.stdout, "buffer", None)
    with open(log_path, "ab") as log, subprocess.Popen([_executable(command[0]), *command[1:]], env=env,
                                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
            log.write(chunk)
            if not echo:
                continue
            if out is not None:  # raw bytes keep tqdm's carriage returns: one live progress line
                out.write(chunk)
                out.flush()
            else:
                print(chunk.decode(errors="replace"), end="", flush=True)
        return proc.wait()


def log_tail(log_path: str, lines: int = 15) -> str:
    """The last ``lines`` non-empty lines of a log (of progress lines redrawn with ``\\r``, the last state)."""
    if not os.path.isfile(log_path):
        return ""
    with open(log_path, "rb") as f:
        f.seek(max(0, os.path.getsize(log_path) - (1 << 16)))
        text = f.read().decode(errors="replace")
    kept = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join([line for line in kept if line.strip()][-lines:])


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (stages may run in either)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _run_one(stage: Stage, fresh: bool, env: dict, log_path: str, echo: bool) -> None:
    command = stage.command(fresh)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"# {stage.key}: {stage.title}\n$ {shlex.join(command)}\n")
    if stage.action is not None:
        stage.action()
        return
    code = stream_command(command, env, log_path, echo)
    if code != 0:
        tail = log_tail(log_path)
        raise RuntimeError(f"stage {stage.key} failed with exit code {code}: {shlex.join(command)}; the full output "
                           f"is in {log_path}. Fix the cause and run voco_demo again: finished stages are reused"
                           + (f"\nlast lines of {os.path.basename(log_path)}:\n{tail}" if tail else ""))
    if not stage.is_done():
        raise RuntimeError(f"stage {stage.key} exited 0 but its outputs are missing; see {log_path}")


def run_stages(stages: list[Stage], folders: DemoFolders, state: dict, verbose: bool = False, jobs: int = 1) -> dict:
    """Runs or reuses each stage and records its cost in ``state``.

    A stage is reused when its outputs exist and no stage it needs ran in this call; otherwise it runs
    (continuing an interrupted pre-training or training, or starting over when an input changed).
    Stages start in order; with ``jobs > 1`` up to ``jobs`` of them run at once, each as soon as the
    stages it needs have ended.

    Args:
        stages: From :func:`nnunet_voco.demo.stages.build_stages`.
        folders: The run size's folders (logs go to ``<run>/logs``).
        state: ``{"stages": {key: {...}}}`` from :func:`load_state`; saved after every stage.
        verbose: Stream every command's output to the terminal (one job at a time only).
        jobs: Stages that may run at once.

    Returns:
        ``state``; per stage ``wall_s``, ``cpu_s`` and ``load_avg`` (1-minute load average at its end:
        other work on the machine) of the run that made its outputs (absent when they came from
        elsewhere), and ``reused`` (True when this call reused them). ``cpu_s`` counts every process
        that ended during the stage, so it is exact only with ``jobs == 1``.

    Raises:
        RuntimeError: A command failed or left no outputs; the message names its log file. Stages
            already running are waited for first.
    """
    env, ran, number = folders.environment(), set(), {s.key: i for i, s in enumerate(stages, 1)}
    os.makedirs(os.path.join(folders.run, "logs"), exist_ok=True)
    remaining, running, failure = list(stages), {}, None
    sequential = jobs <= 1

    def label(stage: Stage) -> str:
        return f"[{number[stage.key]}/{len(stages)}] {stage.key}"

    def finish(stage: Stage, start: float, cpu0: float) -> None:
        record = state["stages"].setdefault(stage.key, {})
        record.update(wall_s=round(time.perf_counter() - start, 1), cpu_s=round(_cpu_s() - cpu0, 1),
                      load_avg=round(os.getloadavg()[0], 1), reused=False,
                      finished_at=time.strftime("%Y-%m-%d %H:%M:%S"))
        ran.add(stage.key)
        after = _after(stage)
        print(f" {record['wall_s']:.0f} s{after}" if sequential and not verbose
              else f"{label(stage)}: done in {record['wall_s']:.0f} s{after}", flush=True)
        save_state(folders, state)

    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        while (remaining or running) and failure is None:
            blocked = {s.key for s in remaining} | {s.key for s, _, _ in running.values()}
            for stage in list(remaining):
                if len(running) >= max(1, jobs):
                    break
                if any(n in blocked for n in stage.needs):
                    continue
                remaining.remove(stage)
                fresh = any(n in ran for n in stage.needs)
                log_path = os.path.join(folders.run, "logs", f"{stage.key}.log")
                if not fresh and stage.is_done():
                    blocked.discard(stage.key)
                    state["stages"].setdefault(stage.key, {})["reused"] = True
                    print(f"{label(stage)}: reused (outputs of an earlier run){_after(stage)}", flush=True)
                    save_state(folders, state)
                    continue
                one_line = sequential and not verbose
                print(f"{label(stage)} $ {shlex.join(stage.command(fresh))}" + (" ..." if one_line else ""),
                      end="" if one_line else "\n", flush=True)
                start, cpu0 = time.perf_counter(), _cpu_s()
                future = pool.submit(_run_one, stage, fresh, env, log_path, verbose and sequential)
                running[future] = (stage, start, cpu0)
                if sequential:
                    break
            if not running:
                continue
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                stage, start, cpu0 = running.pop(future)
                try:
                    future.result()
                except RuntimeError as e:
                    print(f" failed" if sequential and not verbose else f"{label(stage)}: failed", flush=True)
                    failure = failure or e
                    continue
                finish(stage, start, cpu0)
        concurrent.futures.wait(running)  # after a failure: let the stages already running end
        for future, (stage, start, cpu0) in list(running.items()):
            if future.exception() is None:
                finish(stage, start, cpu0)
    if failure is not None:
        raise failure
    return state


def _after(stage: Stage) -> str:
    """Runs the stage's follow-up and its tidying (both idempotent); returns what they said, if anything."""
    said = [stage.after()] if stage.after is not None else []
    if stage.tidy is not None:
        said.append(stage.tidy())
    said = [s for s in said if s]
    return ("; " + "; ".join(said)) if said else ""


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
    arms = ", ".join(f"{folders.trainer(a)} ({ARMS[a][1]})" for a in p.arms)
    return (f"{SYNTHETIC_NOTE}\n"
            f"voco_demo --size {p.name} on {device}: phantom {'x'.join(map(str, p.shape))} voxels (z, y, x); "
            f"{len(p.train_seeds)} labelled training cases, {len(p.heldout_seeds)} held-out labelled cases (nnU-Net's "
            f"validation cases), {len(p.unlabelled_seeds)} unlabelled pool images for pre-training (of which "
            f"{p.val_cases} held out for the position monitor); VoCo pre-training {p.pretrain_steps} steps of "
            f"{p.pretrain_batch_size} volume(s) (lr {p.pretrain_lr:g}) on crops {'x'.join(map(str, p.crop_size))} "
            f"(grid {'x'.join(map(str, p.grid))}); then {arms}, each with seeds (folds) "
            f"{', '.join(map(str, p.seeds))}. Each stage's full output: {os.path.join(folders.run, 'logs')}.\n"
            + (ONE_VOLUME_NOTE + "\n" if p.pretrain_batch_size == 1 else "") +
            f"Every command below runs with:\n  export {exports}")


# Why the CPU run sizes pre-train with one volume per step although v2's inter-volume term then pairs each
# volume with itself (voco_pretrain warns about it in the stage log). Measured on the tuning pool (README).
ONE_VOLUME_NOTE = ("Pre-training takes 1 volume per step (voco_pretrain's log warns that v2's inter-volume term then "
                   "pairs a volume with itself): on the tuning pool, 1 volume x 1000 steps gained no less held-out "
                   "position accuracy than 2 volumes x 500 steps (README, 'What limits the pretext').")


def dry_run(work: str, run_size: str, device: str) -> list[str]:
    """What :func:`run_demo` would run, without running or writing anything: one line per stage.

    Args:
        work: Work folder (only read: stages whose outputs exist there are marked "reuse").
        run_size: A key of :data:`nnunet_voco.demo.run_sizes.RUN_SIZES`.
        device: ``cpu`` or ``cuda``; not checked, so a GPU run can be rehearsed on a CPU machine.

    Returns:
        The lines printed: the description, then per stage its number, key, what it needs and its
        command.
    """
    folders = DemoFolders(work, RUN_SIZES[run_size])
    stages = build_stages(folders, device)
    lines = [_describe(folders, device), f"dry run: {len(stages)} stages, up to {folders.run_size.jobs} at once; "
             "nothing is run or written"]
    for i, stage in enumerate(stages, 1):
        status = "reuse" if stage.is_done() else "run"
        needs = f" (after {', '.join(stage.needs)})" if stage.needs else ""
        lines.append(f"[{i}/{len(stages)}] {stage.key}{needs}: {status} $ {shlex.join(stage.command(False))}")
    return lines


def run_demo(work: str, run_size: str = "default", device: str = "cpu", verbose: bool = False,
             started: float | None = None) -> dict:
    """Runs (or resumes) the whole demo and writes its report.

    Args:
        work: Work folder; created if missing. nnU-Net's three folders live inside it.
        run_size: A key of :data:`nnunet_voco.demo.run_sizes.RUN_SIZES`.
        device: ``cpu`` or ``cuda`` for pre-training and training.
        verbose: Stream every command's output (default: one line per stage, full output in the logs).
        started: ``time.perf_counter()`` when the command started (its imports included); default now.

    Returns:
        The results dictionary also written to ``<work>/<run size>/results.json``.

    Raises:
        ValueError: Unknown run size.
        RuntimeError: A stage failed (see :func:`run_stages`).
    """
    if run_size not in RUN_SIZES:
        raise ValueError(f"unknown demo run size {run_size!r}; choose one of {sorted(RUN_SIZES)}")

    started = time.perf_counter() if started is None else started
    folders = DemoFolders(work, RUN_SIZES[run_size])
    print(_describe(folders, device), flush=True)
    state = run_stages(build_stages(folders, device), folders, load_state(folders), verbose, folders.run_size.jobs)
    results = write_report(folders, state, device)
    ran = [k for k, r in state["stages"].items() if not r.get("reused")]
    print(f"\nvoco_demo --size {run_size} finished in {time.perf_counter() - started:.0f} s "
          f"({len(ran)} stage(s) ran, {len(state['stages']) - len(ran)} reused); the work folder {folders.work} holds "
          f"{disk_usage(folders.work) / 2**20:.0f} MiB", flush=True)
    return results
