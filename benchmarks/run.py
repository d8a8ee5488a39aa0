"""The performance figures of nnunet-voco in one command; every figure against a reference of the same run.

    python benchmarks/run.py                # CPU, about 5 minutes (+ about 3 the first time: data)
    python benchmarks/run.py --quick        # about half a minute once the data exist
    python benchmarks/run.py --device cuda  # loss, step profile and scaling on the GPU

Sections (``--sections`` selects):

* ``loss``: forward+backward of ``VoCoLoss`` against a reference with the official codes' structure
  (``tests/reference/official_structure.py``: per-volume tensor operations, a Python double loop over
  base pairs) on the same inputs, calls interleaved; values and gradients must agree.
* ``sampling``: window sampling + augmentation per volume from nnU-Net blosc2 data (one worker,
  default v2 geometry) against a naive per-crop pipeline and the whole-case decompression time.
* ``step``: one pre-training step with the real loader (default worker count) split into data
  wait, input, forward, backward, optimiser and EMA (tiny ResEnc from real ResEnc-M plans).
* ``scaling``: step time and peak memory vs the number of base crops and the crop edge, against
  the encoder alone on the same crops.

Prints markdown tables and writes JSON (``benchmarks/results/run_<time>.json`` or ``--out``).
The first run generates and plans the data (phantoms through ``nnUNetv2_plan_and_preprocess``,
a few minutes) and caches them under ``$TMPDIR/nnunet_voco_bench``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import data_pipeline, step_profile  # noqa: E402
from benchmarks.loss_benchmark import benchmark_loss, loss_table  # noqa: E402

SECTIONS = ("loss", "sampling", "step", "scaling")
SETTINGS = {
    "default": {"loss": {"sizes": None, "repeats": 20, "reference_repeats": 3, "presets": ("v2", "v1")},
                "sampling": {"volumes": 30, "reference_volumes": 6, "loader_batches": 10},
                "step": {"crop_size": (8, 16, 16), "batch_size": 2, "steps": 5, "warmup": 2},
                "scaling": {"base_counts": (4, 9, 16, 27), "crop_edges": (32, 48, 64), "width_divisor": 8,
                            "volumes": 1, "repeats": 2},
                "scaling_cuda": {"base_counts": (4, 9, 16, 27), "crop_edges": (32, 48, 64), "width_divisor": 1,
                                 "volumes": 2, "repeats": 3}},
    "quick": {"loss": {"sizes": ((2, 2, 9, 1024), (16, 2, 9, 1024)), "repeats": 5, "reference_repeats": 1,
                       "presets": ("v2",)},
              "sampling": {"volumes": 12, "reference_volumes": 3, "loader_batches": 4},
              "step": {"crop_size": (8, 16, 16), "batch_size": 2, "steps": 2, "warmup": 1},
              "scaling": {"base_counts": (4, 9), "crop_edges": (16, 24), "width_divisor": 8, "volumes": 1,
                          "repeats": 1},
              "scaling_cuda": {"base_counts": (4, 9), "crop_edges": (32, 48), "width_divisor": 1, "volumes": 2,
                               "repeats": 2}},
}


def run_loss(device: str, s: dict) -> list[dict]:
    return benchmark_loss(device, sizes=s["sizes"], repeats=s["repeats"], reference_repeats=s["reference_repeats"],
                          presets=s["presets"])


def run_sampling(s: dict) -> dict:
    return data_pipeline.benchmark_sampling(data_pipeline.large_sources(), volumes=s["volumes"],
                                            reference_volumes=s["reference_volumes"],
                                            loader_batches=s["loader_batches"])


def _toy_sources():
    from nnunet_voco.nnunet import open_dataset

    return [open_dataset(data_pipeline.TOY["id"], data_pipeline.PLANS, "3d_fullres")]


def run_step(device: str, s: dict) -> dict:
    pipe = step_profile.build_pipeline(_toy_sources(), data_pipeline.PLANS, crop_size=s["crop_size"],
                                       batch_size=s["batch_size"], device=device)
    return step_profile.profile_steps(pipe, steps=s["steps"], warmup=s["warmup"])


def run_scaling(device: str, s: dict) -> dict:
    sources = step_profile.narrowed_sources(_toy_sources(), s["width_divisor"])
    edge = min(s["crop_edges"])
    pipe = step_profile.build_pipeline(sources, data_pipeline.PLANS, crop_size=(edge,) * 3, batch_size=s["volumes"],
                                       num_workers=0, device=device)
    features = sources[0].configuration_manager.network_arch_init_kwargs["features_per_stage"]
    rows = step_profile.scaling(pipe, s["base_counts"], s["crop_edges"], volumes=s["volumes"], repeats=s["repeats"])
    return {"features_per_stage": list(features), "volumes": s["volumes"], "repeats": s["repeats"], "rows": rows}


# ============ markdown ============
def _f(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def sampling_table(r: dict) -> str:
    ours = r["ms_per_volume"]
    rows = [("ours: DataLoader, 1 worker (window read once, crops written once, augmented on the way)",
             r["loader_ms_per_volume"]),
            ("ours: same work in-process (no hand-over)", r["in_process_ms_per_volume"]),
            ("  of which reading the window alone", r["window_read_ms"]),
            ("reference: decompress the whole case once", r["full_case_read_ms"]),
            ("reference: naive per-crop pipeline (whole case, crop by crop, numpy augmentation)",
             r["naive_ms_per_volume"])]
    lines = [f"window {tuple(r['window'])} = grid {tuple(r['grid'])} of {tuple(r['crop_size'])} crops, "
             f"{r['crops_per_volume']} crops per volume; largest read = {r['max_read_fraction_of_window']:.2f} x the "
             f"window = {r['max_read_fraction_of_case']:.2f} x the case", "",
             "| pipeline | ms / volume | relative to ours |", "|---|---|---|"]
    lines += [f"| {name} | {_f(ms)} | {_f(ms / ours if ms is not None else None, 2)}x |" for name, ms in rows]
    return "\n".join(lines)


def step_table(r: dict) -> str:
    names = {"data": "data wait (blocked in next(loader))", "input": "input (to device, on-device augmentation)",
             "forward": "forward (encoder, projector, loss)", "backward": "backward (+ gradient clipping)",
             "optimizer": "optimizer (fused AdamW)", "ema": "EMA teacher update"}
    lines = [f"crop {tuple(r['crop_size'])}, grid {tuple(r['grid'])}, {r['batch_size']} volumes = "
             f"{r['crops_per_step']} crops per step, {r['num_workers']} data worker(s), mean of {r['steps']} steps; "
             f"{r['volumes_per_s']:.2f} volumes/s", "", "| phase | ms / step | share |", "|---|---|---|"]
    lines += [f"| {names[k]} | {r['ms'][k]:.1f} | {100 * r['share'][k]:.1f}% |" for k in step_profile.PHASES]
    lines.append(f"| total | {r['ms_per_step']:.1f} | 100% |")
    return "\n".join(lines)


def scaling_table(result: dict) -> str:
    rows = result["rows"]
    lines = [f"ResEnc from the toy ResEnc-M plans with features {tuple(result['features_per_stage'])}, "
             f"{result['volumes']} volume(s) + 2 targets per step, synthetic crops; median of {result['repeats']}; "
             f"peak = memory above the level before the call", "", "| sweep | base crops | crop edge | crops / step | step ms | encoder-only ms | step / encoder | "
             "step peak MiB | encoder peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['sweep']} | {r['bases']} | {r['crop']} | {r['crops']} | {r['step_ms']:.0f} | "
              f"{r['encoder_ms']:.0f} | {r['step_over_encoder']:.2f} | {_f(r['step_peak_mib'], 0)} | "
              f"{_f(r['encoder_peak_mib'], 0)} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="[OPTIONAL] default cpu")
    parser.add_argument("--quick", action="store_true", help="[OPTIONAL] fewer sizes and repeats (about a minute)")
    parser.add_argument("--out", default=None, help="[OPTIONAL] JSON path (default benchmarks/results/run_<time>.json)")
    parser.add_argument("--root", default=None, help="[OPTIONAL] data cache (default $TMPDIR/nnunet_voco_bench)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS, help="[OPTIONAL] subset")
    parser.add_argument("--threads", type=int, default=None,
                        help="[OPTIONAL] torch threads (default 1 on the CPU: on shared cores OpenMP barriers stall "
                             "multi-threaded runs by several x, which makes ratios unstable; torch's default on CUDA)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was requested but CUDA is not available here; omit it to run on the CPU")
    settings = SETTINGS["quick" if args.quick else "default"]
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    start = time.perf_counter()
    meta = {"mode": "quick" if args.quick else "default", "device": args.device, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    results: dict = {"meta": meta}
    if {"sampling", "step", "scaling"} & set(args.sections):
        data_pipeline.prepare_benchmark_data(args.root)
    print(f"# nnunet-voco benchmarks ({meta['mode']}, {args.device}, torch {meta['torch']}, {meta['threads']} threads, "
          f"load average {_f(meta['load_average'][0] if meta['load_average'] else None, 1)})\n", flush=True)
    for name, run, table in (("loss", lambda: run_loss(args.device, settings["loss"]), loss_table),
                             ("sampling", lambda: run_sampling(settings["sampling"]), sampling_table),
                             ("step", lambda: run_step(args.device, settings["step"]), step_table),
                             ("scaling", lambda: run_scaling(args.device, settings["scaling_cuda" if args.device ==
                                                                                   "cuda" else "scaling"]),
                              scaling_table)):
        if name not in args.sections:
            continue
        t0 = time.perf_counter()
        results[name] = run()
        print(f"## {name} ({time.perf_counter() - t0:.0f} s)\n\n{table(results[name])}\n", flush=True)
    meta["seconds"] = time.perf_counter() - start
    out = args.out or str(Path(__file__).resolve().parent / "results" / time.strftime("run_%Y%m%d_%H%M%S.json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"total {meta['seconds']:.0f} s; JSON written to {out}")
    return results


if __name__ == "__main__":
    main()
