"""GPU throughput of VoCo pre-training with the ResEnc-L encoder, eager and with torch.compile.

    python benchmarks/gpu.py              # a CUDA machine: ResEnc-L plans, the plans' patch size, v2, bf16
    python benchmarks/gpu.py --dry_run    # anywhere: tiny synthetic data and plans, CPU, fp32, 3 steps

What runs is ``voco_pretrain``'s own machinery: ``benchmarks/step_profile.build_pipeline`` calls
the loop's set-up (``nnunet_voco.pretrain.run_setup.resolve_run``: encoder from the plans, layout,
batch rule, ``VoCoModel`` v2, fused AdamW) and loader (default number of workers, pinned memory),
then the loop's ``train_step`` (on-device augmentation) and EMA update. Steps are driven without
any per-step host synchronisation, one synchronisation closes the timed window. Variants:

* ``eager``: as ``voco_pretrain -device cuda`` runs with default flags;
* ``eager, finite flag read every step``: the same plus ``bool(stats["finite"])`` after every
  step, what a loop that checks for non-finite losses per step pays;
* ``compile``: ``--compile`` (``torch.compile`` of the encoder; compile time is excluded).

Reported per variant: steps/s, volumes/s, ms per step, peak GPU memory, and the share of the
loop's wall time spent blocked on the data loader.

Data (cached under ``$TMPDIR/nnunet_voco_bench_gpu``): phantom CT cases (``nnunet_voco.demo.phantom``)
planned and preprocessed by ``nnUNetv2_plan_and_preprocess -pl nnUNetPlannerResEncL``. The
dry run writes a tiny preprocessed dataset with hand-written ResEnc plans instead (seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import data_pipeline, step_profile  # noqa: E402
from nnunet_voco.nnunet import synthetic_datasets  # noqa: E402
from nnunet_voco.pretrain.loop import train_step  # noqa: E402

GPU_DATA = {"id": 995, "name": "BenchResEncL", "shape": (96, 320, 320), "cases": 6}  # (z, y, x) at 2.5 x 1 x 1 mm
DRY_DATA = {"id": 996, "name": "BenchDryRun", "shape": (16, 48, 48), "cases": 2}
PLANS_L = "nnUNetResEncUNetLPlans"


def prepare_gpu_data(root: str, spec: dict, processes: int, log=print) -> list:
    """Phantoms planned with the ResEnc-L planner (once); returns the dataset sources."""
    from nnunet_voco.demo import phantom
    from nnunet_voco.nnunet import open_dataset

    os.environ.update(synthetic_datasets.nnunet_folders(root))
    marker = os.path.join(root, f"ready_{spec['id']}.json")
    if not (os.path.isfile(marker) and json.load(open(marker)) == json.loads(json.dumps(spec))):
        start = time.perf_counter()
        log(f"gpu benchmark data: {spec['cases']} phantoms of {spec['shape']} -> nnUNetPlannerResEncL ...")
        phantom.write_nnunet_raw_dataset(os.environ["nnUNet_raw"], spec["id"], spec["name"],
                                         list(range(spec["cases"])), shape=spec["shape"], spacing=(2.5, 1.0, 1.0))
        cmd = [data_pipeline._console("nnUNetv2_plan_and_preprocess"), "-d", str(spec["id"]), "-c", "3d_fullres",
               "-pl", "nnUNetPlannerResEncL", "-np", str(processes), "-npfp", str(processes)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
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


def measure_throughput(pipe: step_profile.Pipeline, steps: int, warmup: int, sync_every_step: bool = False) -> dict:
    """Steps/s, volumes/s, peak memory and data-wait share of ``steps`` steps after ``warmup``.

    The loop mirrors ``run_pretraining``'s inner loop (next batch, ``train_step``, EMA update) and
    reads nothing from the device per step unless ``sync_every_step``.
    """
    device = pipe.ctx.device
    iterator = iter(pipe.loader)
    flags, data_s = [], 0.0
    try:
        for i in range(warmup + steps):
            if i == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
            t0 = time.perf_counter()
            batch = next(iterator)
            if i >= warmup:
                data_s += time.perf_counter() - t0
            stats = train_step(pipe.model, batch, pipe.optimizer, pipe.setup.scaler, pipe.ctx, pipe.amp_dtype,
                               pipe.config, pipe.device_augment, pipe.generator, pipe.inplane)
            pipe.model.update_teacher(pipe.config.ema_momentum)
            flags.append(bool(stats["finite"]) if sync_every_step else stats["finite"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - start
    finally:
        if hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"steps_per_s": steps / total, "volumes_per_s": steps * pipe.batch_size / total,
            "ms_per_step": 1e3 * total / steps, "peak_gpu_gib": peak, "data_wait_share": data_s / total,
            "all_finite": all(bool(f) for f in flags), "steps": steps}


def variants(compile_too: bool) -> list[tuple[str, dict]]:
    rows = [("eager", {"compile": False, "sync": False}),
            ("eager, finite flag read every step", {"compile": False, "sync": True})]
    if compile_too:
        rows.append(("compile (encoder)", {"compile": True, "sync": False}))
    return rows


def markdown(result: dict) -> str:
    m = result["meta"]
    head = (f"{m['device_name']}, plans {m['plans']} (patch {tuple(m['patch_size'])}), crop {tuple(m['crop_size'])}, "
            f"grid {tuple(m['grid'])}, {m['batch_size']} volume(s) = {m['crops_per_step']} crops per step, "
            f"{m['precision']}, {m['num_workers']} data workers, {m['steps']} timed steps after {m['warmup']}")
    lines = [head, "", "| variant | steps/s | volumes/s | ms / step | peak GPU memory (GiB) | data wait |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r.get("skipped"):
            lines.append(f"| {r['variant']} | skipped: {r['skipped']} | | | | |")
            continue
        peak = "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.1f}"
        lines.append(f"| {r['variant']} | {r['steps_per_s']:.2f} | {r['volumes_per_s']:.2f} | {r['ms_per_step']:.0f} | "
                     f"{peak} | {100 * r['data_wait_share']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry_run", action="store_true", help="[OPTIONAL] tiny synthetic run on the CPU (fp32)")
    parser.add_argument("--steps", type=int, default=None, help="[OPTIONAL] timed steps (default 20; dry run 2)")
    parser.add_argument("--warmup", type=int, default=None, help="[OPTIONAL] untimed steps (default 5; dry run 1)")
    parser.add_argument("--no_compile", action="store_true", help="[OPTIONAL] skip the torch.compile variant")
    parser.add_argument("--num_workers", type=int, default=None, help="[OPTIONAL] default: the loop's default")
    parser.add_argument("--cases", type=int, default=GPU_DATA["cases"], help="[OPTIONAL] phantom cases")
    parser.add_argument("--root", default=None, help="[OPTIONAL] data cache folder")
    parser.add_argument("--out", default=None, help="[OPTIONAL] JSON path (default benchmarks/results/gpu_<time>.json)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device here; run on a GPU machine or pass --dry_run")
    steps = args.steps or (2 if args.dry_run else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 5)
    root = args.root or os.path.join(tempfile.gettempdir(), "nnunet_voco_bench_gpu")
    if args.dry_run:
        sources, device, precision = prepare_dry_run_data(root), "cpu", "fp32"
    else:
        torch.backends.cudnn.benchmark = True
        spec = dict(GPU_DATA, cases=args.cases)
        sources, device, precision = prepare_gpu_data(root, spec, max(1, min(8, (os.cpu_count() or 2) // 2))), "cuda", "bf16"
    rows, meta = [], None
    for name, v in variants(not args.no_compile and not args.dry_run):
        pipe = step_profile.build_pipeline(sources, PLANS_L, device=device, precision=precision, compile=v["compile"],
                                           num_workers=args.num_workers)
        if meta is None:
            cm = sources[0].configuration_manager
            meta = {"device_name": torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)",
                    "plans": PLANS_L, "patch_size": list(cm.patch_size), "crop_size": list(pipe.layout.crop_size),
                    "grid": list(pipe.layout.grid), "batch_size": pipe.batch_size,
                    "crops_per_step": pipe.batch_size * (pipe.layout.num_bases + pipe.layout.num_targets),
                    "precision": precision, "num_workers": pipe.num_workers, "steps": steps, "warmup": warmup,
                    "torch": torch.__version__, "dry_run": args.dry_run}
        rows.append({"variant": name, **measure_throughput(pipe, steps, warmup, v["sync"])})
        del pipe
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.dry_run:
        rows.append({"variant": "compile (encoder)", "skipped": "dry run (CPU); compile is measured on the GPU"})
    result = {"meta": meta, "rows": rows}
    print(markdown(result))
    out = args.out or str(Path(__file__).resolve().parent / "results" / time.strftime("gpu_%Y%m%d_%H%M%S.json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"JSON written to {out}")
    return result


if __name__ == "__main__":
    main()
