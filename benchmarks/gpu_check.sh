#!/usr/bin/env bash
# gpu_check.sh: the one-shot GPU check of nnunet-voco (one CUDA GPU, no network; written for the H200 hosts:
# 16 CPU cores, Python 3.12 with torch 2.11 preinstalled). Run from the repo root:
#
#   bash benchmarks/gpu_check.sh                          # on the GPU host, with .whl/ next to the repo (README)
#   GPUCHECK_DEVICE=cpu bash benchmarks/gpu_check.sh      # rehearsal: every stage on the CPU at toy sizes
#
# Stages, in priority order under one deadline (GPUCHECK_BUDGET seconds, default 540, so that one 10-minute
# device command holds the whole check with room for start-up); each has its own cap, runs in its own process
# group (killed at the cap), and a failure does not stop the next one:
#   env            GPU, driver, torch, bf16 support, /dev/shm, CPUs
#   install        the wheels carried in .whl/ (no network there), SimpleITK from .whl/simpleitk.tar.xz, then
#                  `pip install --no-deps .` (non-editable: installs the nnUNet_extTrainer start-up hook).
#                  Rehearsal: checks that the wheels resolve for CPython 3.12 (pip --dry-run), installs nothing
#   data           6 phantom CTs of 96 x 320 x 320 (rehearsal 5 x 32 x 96 x 96: nnU-Net's 5 folds) planned by ResEnc-L
#   bench_eager    benchmarks/gpu.py --variants eager: a real voco_pretrain (default flags: v2, bf16 where native,
#                  cudnn.benchmark, data-fitted geometry, batch rule), steps/s, volumes/s, peak memory, GPU
#                  utilisation, data-wait share; and the VoCo step over the encoder's own forward + backward
#   ddp            benchmarks/ddp_one_rank.py under torchrun: a 1-rank NCCL group through every DDP branch (DDP,
#                  SyncBN in both projectors, stop agreement, monitor share + gather, gloo barriers), monitor on,
#                  checkpoints and exports, then a --c resume
#   nnunet         nnUNetv2_train with nnUNetTrainerVoCo and with nnUNetTrainer (budget twins, same plans,
#                  nnUNet_compile=f for both): epoch times and their ratio
#   bench_compile  benchmarks/gpu.py --variants compile: the same run with --compile (compile time excluded)
#   resume         the compiled run continued with --compile --c, then with --c without compile; no checkpoint
#                  or export may hold `_orig_mod.` or `module.` keys
# Outputs in $OUT (at most 8 files come back from the device): summary.md, summary.json, run.log, logs.tgz.
# Knobs: GPUCHECK_BUDGET, GPUCHECK_STAGES ("env install data ..."), GPUCHECK_BENCH_STEPS (15), GPUCHECK_WARMUP (3),
#        GPUCHECK_EPOCHS (3), GPUCHECK_ITERS (10), GPUCHECK_WORK (/tmp/gpu_check), GPUCHECK_PYTHON (python3),
#        GPUCHECK_GEOMETRY (voco_pretrain geometry flags; rehearsal "--crop_size 16 32 32 --batch_size 2"),
#        GPUCHECK_NN_BATCH (cap on nnU-Net's batch size; rehearsal 1).

set -o pipefail

REPO=$(pwd)
OUT=${OUT:-$REPO/gpu_check_out}
W=${GPUCHECK_WORK:-/tmp/gpu_check}
L=$W/logs
mkdir -p "$OUT" "$L" "$W/runs"
exec > >(tee -a "$OUT/run.log") 2>&1

DEVICE=${GPUCHECK_DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then  # rehearsal sizes: every stage runs, in minutes on a few cores
  DEFAULT_BUDGET=5400 SHAPE="32 96 96" CASES=5 STEPS=2 WARMUP=1 EPOCHS=2 ITERS=2 RATIO=1
  GEOMETRY=${GPUCHECK_GEOMETRY:-"--crop_size 16 32 32 --batch_size 2"} NN_BATCH=${GPUCHECK_NN_BATCH:-1}
else  # the default geometry and batch rule, nnU-Net's batch size
  DEFAULT_BUDGET=540 SHAPE="96 320 320" CASES=6 STEPS=${GPUCHECK_BENCH_STEPS:-15} WARMUP=${GPUCHECK_WARMUP:-3}
  EPOCHS=${GPUCHECK_EPOCHS:-3} ITERS=${GPUCHECK_ITERS:-10} RATIO=5 GEOMETRY=${GPUCHECK_GEOMETRY:-} NN_BATCH=${GPUCHECK_NN_BATCH:-0}
fi
START=$(date +%s)
BUDGET=${GPUCHECK_BUDGET:-$DEFAULT_BUDGET}
DEADLINE=$((START + BUDGET))
STAGES=${GPUCHECK_STAGES:-"env install data bench_eager ddp nnunet bench_compile resume"}
PY=${GPUCHECK_PYTHON:-python3}
PYBIN=$(dirname "$($PY -c 'import sys; print(sys.executable)')")
export PATH="$PYBIN:$PATH"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export GPUCHECK_REPO=$REPO GPUCHECK_W=$W GPUCHECK_L=$L GPUCHECK_DEADLINE=$DEADLINE GPUCHECK_DEVICE=$DEVICE
export GPUCHECK_SHAPE=$SHAPE GPUCHECK_CASES=$CASES GPUCHECK_STEPS=$STEPS GPUCHECK_WARMUP_STEPS=$WARMUP
export GPUCHECK_EPOCHS_=$EPOCHS GPUCHECK_ITERS_=$ITERS GPUCHECK_RATIO=$RATIO GPUCHECK_GEOMETRY_=$GEOMETRY
export GPUCHECK_NN_BATCH_=$NN_BATCH
export nnUNet_raw=$W/nn/raw nnUNet_preprocessed=$W/nn/preprocessed nnUNet_results=$W/nn/results
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-8}
export nnUNet_compile=${nnUNet_compile:-f}   # nnU-Net's full-network compile costs minutes; off for both trainers
export DS=995 PLANS=nnUNetResEncUNetLPlans   # benchmarks/gpu.py's ResEnc-L phantom dataset, shared by all stages
[ "$DEVICE" = cpu ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

printf 'stage\trc\tseconds\n' > "$L/stages.tsv"
echo "gpu_check: device $DEVICE, budget ${BUDGET}s, stages: $STAGES, python $PY, work $W"

pack() {  # all logs in one archive ($OUT returns at most 8 files); after every stage
  tar -czf "$OUT/logs.tgz.part" -C "$W" logs 2>/dev/null && mv -f "$OUT/logs.tgz.part" "$OUT/logs.tgz"
}
trap pack EXIT

run_stage() {  # run_stage NAME CAP_SECONDS: runs the function stage_NAME in its own process group
  local name=$1 cap=$2 left t0 pid smi= rc= wrc
  case " $STAGES " in *" $name "*) ;; *) printf '%s\tnot_selected\t0\n' "$name" >> "$L/stages.tsv"; return 0 ;; esac
  left=$((DEADLINE - $(date +%s) - 10))
  if ((left < 20)); then printf '%s\tno_time_left\t0\n' "$name" >> "$L/stages.tsv"; echo "== $name: no time left"; return 0; fi
  ((cap > left)) && cap=$left
  echo "== $name (cap ${cap}s, $((DEADLINE - $(date +%s)))s left)"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader,nounits -lms 500 \
      > "$L/$name.smi.csv" 2>/dev/null &
    smi=$!
  fi
  t0=$(date +%s)
  setsid bash -c "stage_$name" > "$L/$name.log" 2>&1 < /dev/null &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if (($(date +%s) - t0 >= cap)); then
      echo "GPUCHECK: stage $name hit its ${cap}s cap; SIGTERM to its process group" >> "$L/$name.log"
      kill -TERM -- "-$pid" 2>/dev/null
      for _ in $(seq 15); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null
      rc=124
      break
    fi
    sleep 1
  done
  wait "$pid"; wrc=$?
  rc=${rc:-$wrc}
  kill -KILL -- "-$pid" 2>/dev/null   # leftovers of the group (data workers), so the next stage has the GPU alone
  [ -n "$smi" ] && { kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null; }
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >> "$L/stages.tsv"
  echo "-- $name: rc $rc after $(($(date +%s) - t0))s; last lines:"
  tail -n 12 "$L/$name.log"
  pack
}

stage_env() {
  set -x
  nvidia-smi || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  nproc; free -g; df -h /dev/shm /tmp "$GPUCHECK_W"; ulimit -n -u
  python3 -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.is_available()); c = torch.cuda.is_available(); print('device', torch.cuda.get_device_name(0) if c else \
'cpu', 'bf16 native', c and torch.cuda.is_bf16_supported(False), 'nccl', c and torch.cuda.nccl.version(), \
'cudnn', torch.backends.cudnn.version())"
  python3 -m pip list 2>/dev/null | grep -i -E '^(torch|torchvision|timm|numpy|scipy|scikit-image|triton|setuptools|nvidia-ml-py) '
}

stage_install() {
  set -x
  cd "$GPUCHECK_REPO" || exit 1
  ls -la .whl || { echo "GPUCHECK: no .whl folder; see README 'GPU check'"; exit 1; }
  if [ "$GPUCHECK_DEVICE" = cpu ]; then  # rehearsal: do the carried wheels resolve for the host's CPython 3.12?
    python3 -m pip install --dry-run --no-index --no-deps --ignore-installed --target "$GPUCHECK_W/site312" \
      --python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      .whl/*.whl || exit 1
    python3 -c "import sys, tarfile; names = tarfile.open(sys.argv[1]).getnames(); print('GPUCHECK simpleitk files', \
len(names)); assert any(n.endswith('.so') for n in names)" .whl/simpleitk.tar.xz || exit 1
    exit 0
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || exit 1
  local site
  site=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  if [ -f .whl/simpleitk.tar.xz ]; then
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
      .whl/simpleitk.tar.xz "$site" || exit 1
  fi
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir . || exit 1
  python3 - <<'EOF'
import importlib, os
missing = 0
for name in ("nnunetv2", "blosc2", "SimpleITK", "nibabel", "cc3d", "dynamic_network_architectures",
             "batchgenerators", "batchgeneratorsv2", "acvl_utils", "monai", "timm", "pynvml"):
    try:
        module = importlib.import_module(name)
        print("GPUCHECK_IMPORT ok", name, getattr(module, "__version__", ""))
    except Exception as e:  # report every missing piece, not only the first
        missing += 1
        print("GPUCHECK_IMPORT MISSING", name, type(e).__name__, e)
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: F401 (nnU-Net's import chain)
import nnunet_voco.pretrain.loop  # noqa: F401
import nnunet_voco.trainers  # noqa: F401
print("GPUCHECK nnUNet_extTrainer =", os.environ.get("nnUNet_extTrainer"))
EOF
  command -v voco_pretrain nnUNetv2_train nnUNetv2_plan_and_preprocess torchrun
}

stage_data() {
  set -x
  cd "$GPUCHECK_REPO" || exit 1
  python3 - <<'EOF'
import json, os, sys
sys.path.insert(0, os.environ["GPUCHECK_REPO"])
from benchmarks import gpu
spec = dict(gpu.GPU_DATA, cases=int(os.environ["GPUCHECK_CASES"]), shape=[int(v) for v in os.environ["GPUCHECK_SHAPE"].split()])
sources = gpu.prepare_gpu_data(os.path.join(os.environ["GPUCHECK_W"], "nn"), spec, max(1, min(8, (os.cpu_count() or 2) // 2)))
cm = sources[0].configuration_manager
print("GPUCHECK_PLANS", json.dumps({"patch_size": list(cm.patch_size), "batch_size": cm.batch_size,
                                    "spacing": list(cm.spacing), "cases": len(sources[0].identifiers)}))
EOF
}

bench() {  # bench VARIANT RATIO_REPEATS
  cd "$GPUCHECK_REPO" || exit 1
  python3 benchmarks/gpu.py --device "$GPUCHECK_DEVICE" --variants "$1" --ratio_repeats "$2" \
    --steps "$GPUCHECK_STEPS" --warmup "$GPUCHECK_WARMUP_STEPS" --cases "$GPUCHECK_CASES" --shape $GPUCHECK_SHAPE \
    --root "$GPUCHECK_W/nn" --out "$GPUCHECK_L/bench_$1.json" --timeout 900 $GPUCHECK_GEOMETRY_
}
stage_bench_eager() { set -x; bench eager "$GPUCHECK_RATIO"; }
stage_bench_compile() { set -x; TORCH_LOGS="graph_breaks,recompiles" bench compile 0; }

stage_ddp() {
  set -x
  cd "$GPUCHECK_REPO" || exit 1
  local out="$GPUCHECK_W/runs/ddp1" rc
  local args=(-d "$DS" -p "$PLANS" -device "$GPUCHECK_DEVICE" --log_every 2 --val_every 3 --val_cases 2
              --val_windows 4 --save_every 3 -o "$out" $GPUCHECK_GEOMETRY_)
  torchrun --standalone --nproc_per_node 1 benchmarks/ddp_one_rank.py "${args[@]}" --num_steps 6 --overwrite
  rc=$?
  if [ $rc -eq 0 ]; then  # resume under DDP: fused AdamW state, RNG and the redefined schedule back on the device
    torchrun --standalone --nproc_per_node 1 benchmarks/ddp_one_rank.py "${args[@]}" --num_steps 8 --c
    echo "GPUCHECK_DDP_RESUME rc=$?"
  fi
  mkdir -p "$GPUCHECK_L/ddp_run"
  cp "$out"/config.json "$out"/metrics.jsonl "$out"/training_log_*.txt "$GPUCHECK_L/ddp_run/"
  exit $rc
}

stage_nnunet() {
  set -x
  cd "$GPUCHECK_REPO" || exit 1
  mkdir -p "$GPUCHECK_W/ext"
  # nnU-Net's way to shorten a run: budget twins of both trainers (same epochs and iterations)
  cat > "$GPUCHECK_W/ext/nnunet_voco_gpucheck_trainers.py" <<'EOF'
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_voco.trainers.training_budget import TrainingBudget
from nnunet_voco.trainers.voco_trainers import nnUNetTrainerVoCo, nnUNetTrainerVoCoScratch

EPOCHS, ITERS = int(os.environ["GPUCHECK_EPOCHS_"]), int(os.environ["GPUCHECK_ITERS_"])
BATCH = int(os.environ["GPUCHECK_NN_BATCH_"]) or None  # rehearsal: a cap on the plans' batch size
BUDGET = TrainingBudget(epochs=EPOCHS, iterations_per_epoch=ITERS, val_iterations_per_epoch=2, batch_size=BATCH)


class nnUNetTrainerVoCo_gpucheck(nnUNetTrainerVoCo):
    voco_budget = BUDGET
    voco_warmup_epochs = 1
    voco_test_time_mirroring = False


class nnUNetTrainerVoCoScratch_gpucheck(nnUNetTrainerVoCoScratch):
    voco_budget = BUDGET
    voco_warmup_epochs = 1
    voco_test_time_mirroring = False


class nnUNetTrainer_gpucheck(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # nnU-Net records these names for checkpoints
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = EPOCHS, ITERS, 2

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if BATCH:
            self.batch_size = min(self.batch_size, BATCH)

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass  # the epoch time is the figure; the VoCo twin runs the validation
EOF
  local shim tr rc d weights
  shim=$(python3 -c 'import nnunet_voco.trainers.discovery as d; print(d.shim_folder())')
  export nnUNet_extTrainer="$shim:$GPUCHECK_W/ext"
  weights=$(ls "$GPUCHECK_W"/runs/ddp1/voco_encoder.pth "$GPUCHECK_W"/nn/runs/eager/voco_encoder.pth 2>/dev/null | head -n 1)
  tr=nnUNetTrainerVoCo_gpucheck
  if [ -n "$weights" ]; then export nnUNet_voco_weights=$weights; else tr=nnUNetTrainerVoCoScratch_gpucheck; fi
  echo "GPUCHECK_TRAINER $tr ${weights:-no weights}"
  nnUNetv2_train "$DS" 3d_fullres 0 -p "$PLANS" -tr "$tr" -device "$GPUCHECK_DEVICE"
  rc=$?
  nnUNetv2_train "$DS" 3d_fullres 0 -p "$PLANS" -tr nnUNetTrainer_gpucheck -device "$GPUCHECK_DEVICE"
  echo "GPUCHECK_STOCK rc=$?"
  for t in "$tr" nnUNetTrainer_gpucheck; do
    d="$nnUNet_results/Dataset995_BenchResEncL/${t}__${PLANS}__3d_fullres/fold_0"
    mkdir -p "$GPUCHECK_L/nnunet_$t"
    cp "$d"/training_log_*.txt "$GPUCHECK_L/nnunet_$t/"
    [ -f "$d/validation/summary.json" ] && cp "$d/validation/summary.json" "$GPUCHECK_L/nnunet_$t/"
  done
  exit $rc
}

stage_resume() {
  set -x
  cd "$GPUCHECK_REPO" || exit 1
  local out="$GPUCHECK_W/nn/runs/compile" n rc1 rc2
  [ -f "$out/checkpoint_final.pth" ] || { echo "GPUCHECK: no compiled run to resume (bench_compile did not finish)"; exit 1; }
  n=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['config']['num_steps'])" "$out/config.json")
  local args=(-d "$DS" -p "$PLANS" -device "$GPUCHECK_DEVICE" -o "$out" --val_cases 0 --log_every 2 --save_every 1000
              $GPUCHECK_GEOMETRY_)
  python3 -m nnunet_voco.pretrain.cli "${args[@]}" --compile --c --num_steps $((n + 4))
  rc1=$?
  python3 -m nnunet_voco.pretrain.cli "${args[@]}" --c --num_steps $((n + 6))
  rc2=$?
  echo "GPUCHECK_RESUME compiled_rc=$rc1 plain_rc=$rc2"
  python3 - "$out" <<'EOF'
import glob, os, sys, torch
bad = 0
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.pth"))):
    state = torch.load(path, weights_only=True, map_location="cpu")
    tensors = state.get("model") or state.get("encoder") or state.get("network_weights")
    wrapped = [k for k in tensors if "_orig_mod" in k or k.startswith("module.")]
    bad += len(wrapped)
    print("GPUCHECK_KEYS", os.path.basename(path), "step", state.get("step"), "keys", len(tensors), "wrapped", len(wrapped))
sys.exit(1 if bad else 0)
EOF
  local keys=$?
  exit $((rc1 || rc2 || keys))
}

export -f run_stage bench stage_env stage_install stage_data stage_bench_eager stage_bench_compile stage_ddp stage_nnunet \
  stage_resume

if [ "$DEVICE" = cpu ]; then
  CAPS="env:30 install:120 data:300 bench_eager:600 ddp:600 nnunet:1800 bench_compile:1200 resume:900"
else
  CAPS="env:20 install:150 data:120 bench_eager:150 ddp:110 nnunet:170 bench_compile:240 resume:120"
fi
for entry in $CAPS; do
  run_stage "${entry%%:*}" "${entry##*:}"
done

# ---- summary: summary.json + summary.md in $OUT ----
python3 - "$L" "$OUT" <<'EOF'
import csv, glob, json, os, re, statistics, sys

logs, out = sys.argv[1], sys.argv[2]
summary = {"device": os.environ.get("GPUCHECK_DEVICE"), "stages": {}}


def text(name):
    path = os.path.join(logs, name)
    return open(path, errors="replace").read() if os.path.isfile(path) else ""


def load(path):
    try:
        return json.load(open(path))
    except Exception:
        return None


for row in csv.DictReader(open(os.path.join(logs, "stages.tsv")), delimiter="\t"):
    summary["stages"][row["stage"]] = {"rc": row["rc"], "seconds": row["seconds"]}
for stage, s in summary["stages"].items():
    path = os.path.join(logs, f"{stage}.smi.csv")
    if os.path.isfile(path):
        rows = [r for r in csv.reader(open(path)) if len(r) >= 3]
        mem = [float(r[1]) for r in rows if r[1].strip().replace(".", "").isdigit()]
        util = [float(r[2]) for r in rows if r[2].strip().replace(".", "").isdigit()]
        s.update(smi_peak_mib=max(mem) if mem else None, smi_mean_util=round(statistics.mean(util), 1) if util else None)
    errors = re.findall(r"(?m)^(?:\w+Error|RuntimeError|voco_pretrain: error|Traceback).*$", text(f"{stage}.log"))
    if errors:
        s["first_errors"] = errors[:3]

summary["imports"] = re.findall(r"(?m)^GPUCHECK_IMPORT (.*)", text("install.log"))
summary["plans"] = [json.loads(p) for p in re.findall(r"(?m)^GPUCHECK_PLANS (.*)", text("data.log"))]
eager, compiled = load(os.path.join(logs, "bench_eager.json")), load(os.path.join(logs, "bench_compile.json"))
summary["bench"] = [r for b in (eager, compiled) if b for r in b["rows"]]
summary["step_over_encoder"] = (eager or {}).get("step_over_encoder")
summary["bench_meta"] = (eager or compiled or {}).get("meta")

ddp = text("ddp.log")
summary["ddp"] = {"wrapped": re.findall(r"(?m)^GPUCHECK_DDP (.*)", ddp), "resume": re.findall(r"(?m)^GPUCHECK_DDP_RESUME (.*)", ddp),
                  "peak_alloc_gib": re.findall(r"(?m)^GPUCHECK_PEAK_ALLOC_GIB ([\d.]+)", ddp),
                  "finished": re.findall(r"(?m)^VoCo: finished .*", ddp),
                  "monitor": re.findall(r"VoCo: held-out position accuracy .*", ddp)[-1:]}
resume = text("resume.log")
summary["resume"] = {"rcs": re.findall(r"(?m)^GPUCHECK_RESUME (.*)", resume), "keys": re.findall(r"(?m)^GPUCHECK_KEYS (.*)", resume),
                     "continued": re.findall(r"VoCo: continuing from .*", resume)}


def epoch_times(folder):
    log = "".join(open(f, errors="replace").read() for f in glob.glob(os.path.join(logs, folder, "training_log_*.txt")))
    return [float(x) for x in re.findall(r"Epoch time: ([\d.]+) s", log)], re.findall(r"VoCo: loaded .*", log)[:1]


voco_dirs = [os.path.basename(d) for d in glob.glob(os.path.join(logs, "nnunet_nnUNetTrainerVoCo*"))]
voco_times, loaded = epoch_times(voco_dirs[0]) if voco_dirs else ([], [])
stock_times, _ = epoch_times("nnunet_nnUNetTrainer_gpucheck")
val = load(os.path.join(logs, voco_dirs[0], "summary.json")) if voco_dirs else None
summary["nnunet"] = {"trainer": voco_dirs[0][len("nnunet_"):] if voco_dirs else None, "weights": loaded,
                     "voco_epoch_s": voco_times, "stock_epoch_s": stock_times,
                     "last_epoch_ratio": voco_times[-1] / stock_times[-1] if voco_times and stock_times else None,
                     "voco_validation_dice": ((val or {}).get("foreground_mean") or {}).get("Dice")}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1, default=str)

md = [f"# nnunet-voco GPU check ({summary['device']})", "", "| stage | rc | s | nvidia-smi peak MiB | mean util % |",
      "|---|---|---|---|---|"]
md += [f"| {k} | {s['rc']} | {s['seconds']} | {s.get('smi_peak_mib')} | {s.get('smi_mean_util')} |"
       for k, s in summary["stages"].items()]
md += [f"- {k} failed: {s['first_errors']}" for k, s in summary["stages"].items() if s["rc"] != "0" and "first_errors" in s]
md += ["", f"plans: {summary['plans']}", f"bench: {json.dumps(summary['bench_meta'])}", ""]
for r in summary["bench"]:
    if "failed" in r:
        md.append(f"- {r['variant']}: failed ({r['failed']})")
        continue
    md.append(f"- {r['variant']}: {r['steps_per_s']:.3f} steps/s, {r['volumes_per_s']:.2f} volumes/s "
              f"({r['batch_size']} volumes/step, crop {r['crop_size']} x grid {r['grid']}), peak GPU "
              f"{r['peak_gpu_gib']} GiB, GPU util {r['gpu_util_mean']}, data wait {100 * r['data_wait_share']:.1f}%")
ratio = summary["step_over_encoder"]
if ratio:
    md.append(f"- VoCo step {ratio['step_ms']:.1f} ms / encoder forward+backward {ratio['encoder_ms']:.1f} ms at "
              f"{ratio['crops']} crops = {ratio['ratio']:.2f}x (target <= 1.3x)")
n = summary["nnunet"]
md += [f"- fine-tuning {n['trainer']} epochs {n['voco_epoch_s']} s vs nnUNetTrainer {n['stock_epoch_s']} s: last-epoch "
       f"ratio {n['last_epoch_ratio']}; weights {n['weights']}; validation Dice {n['voco_validation_dice']}",
       f"- DDP (1-rank): {json.dumps(summary['ddp'])}", f"- compile resume: {json.dumps(summary['resume'])}"]
open(os.path.join(out, "summary.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
pack
