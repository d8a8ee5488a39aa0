"""Resident memory of ``voco_pretrain``: flat over steps, and independent of the number of cases.

Builds small nnU-Net-preprocessed datasets (blosc2 files written by nnU-Net's own
``nnUNetDatasetBlosc2.save_case``) that borrow the plans of an already planned *template* dataset,
runs the real ``voco_pretrain`` on each in a subprocess, and samples the resident set size (RSS,
process plus data workers) while it trains, aligned with the step counter in ``metrics.jsonl``.
Cases are read lazily (one window at a time), so 100 cases must cost about what 10 cases cost, and
RSS after the first few steps must stay flat.

Everything is written under a temporary nnU-Net tree; the template folder is only read. Run::

    python benchmarks/memory.py --template $nnUNet_preprocessed/Dataset990_VoCoToy --cases 10 100 --steps 30

``--json`` prints one JSON object instead of the table (``tests/test_reliability.py`` uses it).
The datasets are written by :mod:`nnunet_voco.nnunet.synthetic_datasets` (``make_preprocessed_dataset``,
``ct_like_case``), which the tests use too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from nnunet_voco.nnunet.synthetic_datasets import ct_like_case, make_preprocessed_dataset

FAST_FLAGS = ["-device", "cpu", "--crop_size", "8", "16", "16", "--batch_size", "2", "--head_dim", "64",
              "--num_workers", "0", "--log_every", "1"]


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc] + proc.children(recursive=True))
    except psutil.Error:
        return 0


def _steps_logged(metrics_file: str) -> int:
    try:
        with open(metrics_file) as f:
            return sum(1 for line in f if line.endswith("\n"))
    except FileNotFoundError:
        return 0


def trace_run(cmd: list[str], env: dict, metrics_file: str, interval: float = 0.1) -> dict:
    """Run ``cmd`` and sample its RSS; returns ``returncode``, ``rss_by_step`` (MiB, max while that
    many steps were logged) and ``maxrss_mib`` (the kernel's peak over the whole run)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    rss_by_step: dict[int, float] = {}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        step, rss = _steps_logged(metrics_file), _tree_rss(proc.pid) / 2**20
        if step >= 1 and rss:
            rss_by_step[step] = max(rss_by_step.get(step, 0.0), rss)
        time.sleep(interval)
    stderr = proc.stderr.read()
    proc.stderr.close()
    return {"returncode": proc.returncode, "stderr_tail": stderr[-2000:], "rss_by_step": rss_by_step,
            "maxrss_mib": usage.ru_maxrss / 1024}


def measure(template_folder: str, cases: list[int], steps: int, case_shape: tuple[int, int, int, int],
            warm_step: int = 5, workdir: str | None = None, extra_flags: list[str] | None = None) -> list[dict]:
    """One traced ``voco_pretrain`` run per entry of ``cases``; returns one result row per run."""
    root = workdir or tempfile.mkdtemp(prefix="voco_memory_")
    env = dict(os.environ)
    for key in ("raw", "preprocessed", "results"):
        env[f"nnUNet_{key}"] = os.path.join(root, key)
        os.makedirs(env[f"nnUNet_{key}"], exist_ok=True)
    exe = os.path.join(os.path.dirname(sys.executable), "voco_pretrain")
    rows = []
    for i, n in enumerate(cases):
        rng = np.random.default_rng(i)
        generated = {f"case_{j:04d}": ct_like_case(case_shape, rng) for j in range(n)}
        name = make_preprocessed_dataset(env["nnUNet_preprocessed"], template_folder, 970 + i, f"Memory{n}", generated)
        out = os.path.join(root, "runs", os.path.basename(name))
        cmd = [exe if os.path.exists(exe) else "voco_pretrain", "-d", str(970 + i), "-o", out,
               "--num_steps", str(steps), "--save_every", str(steps + 1)] + (extra_flags or FAST_FLAGS)
        result = trace_run(cmd, env, os.path.join(out, "metrics.jsonl"))
        # Samples taken once all steps were logged belong to the final save and export, not to training.
        by_step = {k: v for k, v in result["rss_by_step"].items() if k < steps}
        warm = by_step.get(warm_step, min(by_step.values(), default=0.0))
        last = by_step.get(max(by_step, default=0), 0.0)
        rows.append({"cases": n, "steps": steps, "case_mib": float(np.prod(case_shape)) * 4 / 2**20,
                     f"rss_step{warm_step}_mib": warm, "rss_last_mib": last, "growth_mib": last - warm,
                     "peak_train_mib": max(by_step.values(), default=0.0),
                     "peak_export_mib": result["rss_by_step"].get(steps, 0.0),
                     **{k: result[k] for k in ("returncode", "maxrss_mib", "stderr_tail")},
                     "rss_by_step": {int(k): round(v, 1) for k, v in sorted(by_step.items())}})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--template", required=True, help="a planned dataset folder (…/nnUNet_preprocessed/DatasetXXX_Y)")
    p.add_argument("--cases", type=int, nargs="+", default=[10, 100], help="dataset sizes to compare")
    p.add_argument("--steps", type=int, default=30, help="training steps per run")
    p.add_argument("--warm_step", type=int, default=5, help="step after which RSS must stay flat")
    p.add_argument("--case_shape", type=int, nargs=4, default=[1, 48, 128, 128], metavar=("C", "X", "Y", "Z"))
    p.add_argument("--workdir", default=None, help="where the temporary nnU-Net tree goes (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    rows = measure(args.template, args.cases, args.steps, tuple(args.case_shape), args.warm_step, args.workdir)
    if args.json:
        print(json.dumps({"rows": rows}))
    else:
        print(f"{'cases':>6} {'data MiB':>9} {'steps':>6} {'RSS@' + str(args.warm_step):>9} "
              f"{'RSS@' + str(args.steps - 1):>9} {'growth':>7} {'peak train':>11} {'peak export':>12} "
              f"{'peak run':>9}   (MiB)")
        for r in rows:
            print(f"{r['cases']:>6} {r['cases'] * r['case_mib']:>9.0f} {r['steps']:>6} "
                  f"{r[f'rss_step{args.warm_step}_mib']:>9.0f} {r['rss_last_mib']:>9.0f} {r['growth_mib']:>7.1f} "
                  f"{r['peak_train_mib']:>11.0f} {r['peak_export_mib']:>12.0f} {r['maxrss_mib']:>9.0f}"
                  + ("" if r["returncode"] == 0 else f"  FAILED ({r['returncode']})"))
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
