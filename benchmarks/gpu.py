"""GPU throughput of ``voco_pretrain`` itself, eager and with ``--compile`` (DESIGN.md section 9).

    python benchmarks/gpu.py               # CUDA: ResEnc-L phantom data, voco_pretrain's default flags
    python benchmarks/gpu.py --dry_run     # anywhere: tiny synthetic data and plans, CPU, fp32, 3 steps
    python benchmarks/gpu.py --device cpu --shape 24 64 64 --cases 4   # the GPU protocol at toy size on a CPU

What is measured is exactly what ``voco_pretrain`` runs: each variant is a real run of the command
(``python -m nnunet_voco.pretrain.cli``; same set-up ``resolve_run``, same ``train_step``, same data
workers, cuDNN autotuning and precision defaults), with only ``--num_steps``, ``--log_every``,
``--val_cases 0`` (every case feeds the stream) and a far ``--save_every`` given. The figures come
from the run's own ``metrics.jsonl``: every row holds the wall time of its window (``seconds``; the
loop's single device read per window is inside it), the share of it blocked on the data loader and
the peak GPU memory. The first ``--warmup`` steps (cuDNN autotuning, compilation) are left out.

Variants: ``eager`` (the default flags) and ``compile`` (``--compile``); ``--variants`` picks. The
run folders are kept under ``<root>/runs/<variant>`` (``benchmarks/gpu_check.sh`` resumes the
compiled one with ``--c``). GPU utilisation: mean of NVML samples (``nvidia-ml-py``, where
installed) taken between the warm-up row and the last row.

``step / encoder``: one VoCo step (``train_step`` + EMA, the run's layout and volumes per step,
synthetic crops) over the encoder's own forward + backward of the same crops under the same autocast
(:func:`benchmarks.step_profile.step_over_encoder`): the cost of VoCo around the encoder.

Data (cached under ``--root``, default ``$TMPDIR/nnunet_voco_bench_gpu``): phantom CT cases
(``nnunet_voco.demo.phantom``) planned and preprocessed by ``nnUNetv2_plan_and_preprocess -pl
nnUNetPlannerResEncL``. The dry run writes a tiny preprocessed dataset with hand-written ResEnc
plans instead (seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import data_pipeline, step_profile  # noqa: E402
from nnunet_voco.nnunet import synthetic_datasets  # noqa: E402

GPU_DATA = {"id": 995, "name": "BenchResEncL", "shape": (96, 320, 320), "cases": 6}  # (z, y, x) at 2.5 x 1 x 1 mm
DRY_DATA = {"id": 996, "name": "BenchDryRun", "shape": (16, 48, 48), "cases": 2}
PLANS_L = "nnUNetResEncUNetLPlans"
VARIANT_FLAGS = {"eager": [], "compile": ["--compile"]}


def prepare_gpu_data(root: str, spec: dict, processes: int, log=print) -> list:
    """Phantoms planned with the ResEnc-L planner (once per ``spec``); returns the dataset sources."""
    from nnunet_voco.demo import phantom
    from nnunet_voco.nnunet import open_dataset

    os.environ.update(synthetic_datasets.nnunet_folders(root))
    marker = os.path.join(root, f"ready_{spec['id']}.json")
    if not (os.path.isfile(marker) and json.load(open(marker)) == json.loads(json.dumps(spec))):
        start = time.perf_counter()
        log(f"gpu benchmark data: {spec['cases']} phantoms of {tuple(spec['shape'])} -> nnUNetPlannerResEncL ...")
        phantom.write_nnunet_raw_dataset(os.environ["nnUNet_raw"], spec["id"], spec["name"],
                                         list(range(spec["cases"])), shape=tuple(spec["shape"]),
                                         spacing=(2.5, 1.0, 1.0))
        cmd = [data_pipeline._console("nnUNetv2_plan_and_preprocess"), "-d", str(spec["id"]), "-c", "3d_fullres",
               "-pl", "nnUNetPlannerResEncL", "-np", str(processes), "-npfp", str(processes)]
        proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
        with open(marker, "w") as f:
            json.dump(spec, f)
        log(f"gpu benchmark data ready after {time.perf_counter() - start:.0f} s")
    return [open_dataset(spec["id"], PLANS_L, "3d_fullres")]


def prepare_dry_run_data(root: str) -> list:
    """A tiny preprocessed dataset with hand-written ResEnc plans (patch 8 x 16 x 16), written directly."""
    from nnunet_voco.nnunet import open_dataset

    os.environ.update(synthetic_datasets.nnunet_folders(root))
    plans = synthetic_datasets.synthetic_plans(DRY_DATA["name"], (8, 16, 16), (8, 16, 32),
                                               ((1, 1, 1), (1, 2, 2), (2, 2, 2)), (1, 1, 1), batch_size=2,
                                               plans_name=PLANS_L)
    synthetic_datasets.write_synthetic_dataset(os.environ["nnUNet_preprocessed"], DRY_DATA["id"], DRY_DATA["name"],
                                               plans, DRY_DATA["cases"], DRY_DATA["shape"])
    return [open_dataset(DRY_DATA["id"], PLANS_L, "3d_fullres")]


class UtilisationSampler:
    """GPU utilisation samples (NVML, every 0.2 s) in a thread; nothing where NVML is missing."""

    def __init__(self, device_index: int = 0):
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle, self._nvml = pynvml.nvmlDeviceGetHandleByIndex(device_index), pynvml
        except Exception:  # no nvidia-ml-py, no driver, no GPU
            self._handle = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self._handle is not None and not self._stop.wait(0.2):
            self.samples.append((time.time(), int(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)))

    def __enter__(self) -> "UtilisationSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mean_between(self, start: float | None, end: float | None) -> float | None:
        window = [u for t, u in self.samples if start is not None and end is not None and start <= t <= end]
        return sum(window) / len(window) if window else None


def _metric_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("}\n")]


def run_variant(name: str, dataset: str, folder: str, device: str, steps: int, warmup: int, extra: list[str],
                timeout: float, log=print) -> dict:
    """One ``voco_pretrain`` run of ``warmup + steps`` steps; throughput from its metric rows.

    Rows come every ``warmup`` steps (every ``steps`` without warm-up), so the first row closes the
    warm-up and the rows after it cover the timed steps exactly.
    """
    log_every = warmup if warmup > 0 else steps
    argv = [sys.executable, "-m", "nnunet_voco.pretrain.cli", "-d", dataset, "-p", PLANS_L, "-device", device,
            "-o", folder, "--overwrite", "--num_steps", str(warmup + steps), "--log_every", str(log_every),
            "--val_cases", "0", "--save_every", str(10 * (warmup + steps))] + VARIANT_FLAGS[name] + extra
    log(f"gpu benchmark: {name}: {' '.join(argv[1:])}")
    metrics, marks = os.path.join(folder, "metrics.jsonl"), {}
    start = time.perf_counter()
    with UtilisationSampler() as sampler, open(os.path.join(os.path.dirname(folder), f"{name}.log"), "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        seen = 0
        while proc.poll() is None and time.perf_counter() - start < timeout:
            time.sleep(0.1)
            rows = _metric_rows(metrics)
            if len(rows) > seen:  # wall-clock marks of the rows, for the utilisation window
                seen, marks["last"] = len(rows), time.time()
                if "warm" not in marks and rows[-1]["step"] >= warmup:
                    marks["warm"] = marks["last"]
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"variant": name, "failed": f"exit code {proc.returncode}; see {out.name}", "wall_s": wall}
    config = json.load(open(os.path.join(folder, "config.json")))
    timed = [r for r in _metric_rows(metrics) if "loss" in r and r["step"] > warmup]
    seconds = sum(r["seconds"] for r in timed)
    n = timed[-1]["step"] - warmup
    peaks = [r["peak_gpu_gib"] for r in timed if "peak_gpu_gib" in r]
    return {"variant": name, "steps": n, "batch_size": config["batch_size"], "crop_size": config["crop_size"],
            "grid": config["grid"], "steps_per_s": n / seconds, "volumes_per_s": n * config["batch_size"] / seconds,
            "ms_per_step": 1e3 * seconds / n, "data_wait_share": sum(r["data_wait_share"] * r["seconds"]
                                                                     for r in timed) / seconds,
            "peak_gpu_gib": max(peaks) if peaks else None, "gpu_util_mean": sampler.mean_between(
                marks.get("warm"), marks.get("last")), "wall_s": wall, "folder": folder}


def step_ratio(sources, device: str, repeats: int, crop_size=None, batch_size: int | None = None) -> dict:
    """VoCo step over the encoder's own forward + backward at the run's layout (eager)."""
    from benchmarks import step_profile

    pipe = step_profile.build_pipeline(sources, PLANS_L, crop_size=crop_size, batch_size=batch_size, device=device,
                                       num_workers=0)
    return step_profile.step_over_encoder(pipe, repeats)


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [f"{m['device_name']}, plans {m['plans']}, {m['steps']} timed steps after {m['warmup']}, torch "
             f"{m['torch']}", "", "| variant | volumes/step | crop | steps/s | volumes/s | ms / step | peak GPU GiB | "
             "GPU util % | data wait |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "failed" in r:
            lines.append(f"| {r['variant']} | failed: {r['failed']} | | | | | | | |")
            continue
        peak = "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.1f}"
        util = "-" if r["gpu_util_mean"] is None else f"{r['gpu_util_mean']:.0f}"
        lines.append(f"| {r['variant']} | {r['batch_size']} | {tuple(r['crop_size'])} x {r['grid']} | "
                     f"{r['steps_per_s']:.2f} | {r['volumes_per_s']:.2f} | {r['ms_per_step']:.0f} | {peak} | {util} | "
                     f"{100 * r['data_wait_share']:.1f}% |")
    ratio = result.get("step_over_encoder")
    if ratio:
        lines += ["", f"VoCo step {ratio['step_ms']:.1f} ms over the encoder's own forward + backward "
                      f"{ratio['encoder_ms']:.1f} ms at the same {ratio['crops']} crops: {ratio['ratio']:.2f}x "
                      f"(target <= 1.3x)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry_run", action="store_true", help="[OPTIONAL] tiny synthetic data on the CPU (fp32)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="[OPTIONAL] default cuda (dry run: cpu)")
    parser.add_argument("--steps", type=int, default=None, help="[OPTIONAL] timed steps (default 20; dry run 2)")
    parser.add_argument("--warmup", type=int, default=None, help="[OPTIONAL] untimed steps (default 5; dry run 1)")
    parser.add_argument("--variants", default=None, help="[OPTIONAL] comma-separated, from eager,compile "
                                                         "(default both; dry run: eager)")
    parser.add_argument("--ratio_repeats", type=int, default=None, help="[OPTIONAL] timed pairs of the step / encoder "
                                                                        "ratio (default 5; dry run 1; 0: skip)")
    parser.add_argument("--cases", type=int, default=GPU_DATA["cases"], help="[OPTIONAL] phantom cases")
    parser.add_argument("--shape", type=int, nargs=3, default=GPU_DATA["shape"], help="[OPTIONAL] phantom (z, y, x)")
    parser.add_argument("--crop_size", type=int, nargs=3, default=None, help="[OPTIONAL] default: voco_pretrain's")
    parser.add_argument("--batch_size", type=int, default=None, help="[OPTIONAL] default: voco_pretrain's")
    parser.add_argument("--timeout", type=float, default=600, help="[OPTIONAL] seconds per variant")
    parser.add_argument("--root", default=None, help="[OPTIONAL] data and run folder")
    parser.add_argument("--out", default=None, help="[OPTIONAL] JSON path (default benchmarks/results/gpu_<time>.json)")
    parser.add_argument("pretrain_flags", nargs="*", help="[OPTIONAL] after --: more voco_pretrain flags")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.dry_run else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; run on a GPU machine or pass --dry_run / --device cpu")
    steps = args.steps or (2 if args.dry_run else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 5)
    repeats = args.ratio_repeats if args.ratio_repeats is not None else (1 if args.dry_run else 5)
    variants = (args.variants or ("eager" if args.dry_run else "eager,compile")).split(",")
    unknown = [v for v in variants if v not in VARIANT_FLAGS]
    if unknown:
        parser.error(f"unknown --variants {','.join(unknown)}; choose from {','.join(VARIANT_FLAGS)}")
    root = args.root or os.path.join(tempfile.gettempdir(), "nnunet_voco_bench_gpu")
    if args.dry_run:
        sources, spec = prepare_dry_run_data(root), DRY_DATA
    else:
        spec = dict(GPU_DATA, cases=args.cases, shape=list(args.shape))
        sources = prepare_gpu_data(root, spec, max(1, min(8, (os.cpu_count() or 2) // 2)))
    os.makedirs(os.path.join(root, "runs"), exist_ok=True)
    geometry = (["--crop_size", *map(str, args.crop_size)] if args.crop_size else []) + (
        ["--batch_size", str(args.batch_size)] if args.batch_size else [])
    rows = [run_variant(v, str(spec["id"]), os.path.join(root, "runs", v), device, steps, warmup,
                        geometry + args.pretrain_flags, args.timeout) for v in variants]
    cm = sources[0].configuration_manager
    meta = {"device_name": torch.cuda.get_device_name() if device == "cuda" else "CPU", "plans": PLANS_L,
            "patch_size": list(cm.patch_size), "steps": steps, "warmup": warmup, "torch": torch.__version__,
            "dry_run": args.dry_run, "bf16_native": device == "cuda" and torch.cuda.is_bf16_supported(False)}
    result = {"meta": meta, "rows": rows,
              "step_over_encoder": step_ratio(sources, device, repeats, args.crop_size, args.batch_size)
              if repeats > 0 else None}
    print(markdown(result))
    out = args.out or str(Path(__file__).resolve().parent / "results" / time.strftime("gpu_%Y%m%d_%H%M%S.json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"JSON written to {out}")
    return result


if __name__ == "__main__":
    main()
