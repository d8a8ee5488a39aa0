"""Real faults, not mocks: a full or read-only disk (a real tmpfs), truncated image files of every
supported format, two processes writing one folder, and ``--c`` with another ``--num_steps``.

The disk tests mount a small tmpfs (root needed; without it they skip and say why, never fall back
to a mocked ``OSError``). "Full" means a ballast file took all but a few KiB of it; "read-only" means
the tmpfs was remounted with ``-o remount,ro`` (chmod does not stop root).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import PRETRAIN_FAST, TOY_ID, TOY_NAME, script
from nnunet_voco.storage import folder_lock
from nnunet_voco.pool import input_checks
from nnunet_voco.checkpoint import load_file, save_atomic
from nnunet_voco.storage.disk_errors import EXIT_CODE, DiskWriteError
from nnunet_voco.pretrain import outputs, run_state
from nnunet_voco.pretrain.config import PretrainConfig
from nnunet_voco.pretrain.run_schedule import RunSchedule
from nnunet_voco.voco.schedule import lr_at

FAST = ["-device", "cpu", "--crop_size", "8", "16", "16", "--batch_size", "2", "--head_dim", "64", "--num_workers", "0"]
LOCK_HOLDER = """
import sys, time
from nnunet_voco.storage import folder_lock
folder_lock.acquire(sys.argv[1], sys.argv[2])
print("locked", flush=True)
time.sleep(600)
"""


# ============ a real small file system ============
class Tmpfs:
    """A mounted tmpfs: ``fill()`` leaves ``keep`` bytes free, ``read_only()`` remounts it read-only."""

    def __init__(self, path: str):
        self.path = path

    def fill(self, keep: int = 0) -> None:
        free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
        with open(os.path.join(self.path, "ballast"), "wb") as f:
            try:
                f.write(b"\0" * max(free - keep, 0))
                f.flush()
            except OSError:
                pass  # exactly full

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", self.path], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(size_mb: float) -> Tmpfs:
        path = str(tmp_path / f"tmpfs{len(mounted)}")
        os.makedirs(path)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_mb * 1024)}k", "tmpfs", path],
                              capture_output=True, encoding="utf-8", errors="replace")
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs for a real full disk: {proc.stderr.strip() or proc.returncode} "
                        f"(run as root, or in a container with CAP_SYS_ADMIN)")
        mounted.append(path)
        return Tmpfs(path)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", path], capture_output=True)


def _command(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run a console script of this venv (``argv[0]``), capturing its UTF-8 output."""
    return subprocess.run([script(argv[0])] + argv[1:], env=env, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=900)


def _temp_files(folder: str) -> list[str]:
    return [f for f in os.listdir(folder) if ".tmp" in f]


# ============ every write path on a full and on a read-only disk ============
def _small_state():
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    optimizer.step()
    return model, optimizer


def _write_checkpoint(folder, version):
    model, optimizer = _small_state()
    config = PretrainConfig(datasets=("1",), num_steps=10 + version)
    run_state.save_state(os.path.join(folder, run_state.LATEST), version, model, optimizer, None, config, {})


def _write_encoder(folder, version):
    from nnunet_voco.checkpoint import save_encoder

    save_encoder(os.path.join(folder, "voco_encoder.pth"), {"w": torch.full((128, 128), float(version))}, {})


def _write_network(folder, version):
    save_atomic({"network_weights": {"w": torch.full((128, 128), float(version))}},
                os.path.join(folder, "pretrained_network.pth"))


def _write_config(folder, version):
    outputs.write_config(folder, PretrainConfig(datasets=("1",), num_steps=version), {"pad": "x" * 20000 * version})


def _write_metrics(folder, version):
    log = outputs.RunLog(folder)
    log.metrics_file = os.path.join(folder, "metrics.jsonl")
    log.metrics({"step": version, "pad": "x" * 20000})


def _write_log(folder, version):
    log = outputs.RunLog(folder)
    log.text_file = os.path.join(folder, "training_log.txt")
    log(f"line {version} " + "x" * 20000, also_print=False)


def _write_progress(folder, version):
    rng = np.random.default_rng(version)
    outputs.write_progress(folder, [{"step": i, "loss": float(v), "pos": 0.1, "reg": 0.2}
                                    for i, v in enumerate(rng.random(3000))])


def _write_pool_json(folder, version):
    from nnunet_voco.pool.provenance import write_json

    write_json(os.path.join(folder, "voco_pool.json"), {"version": version, "pad": "x" * 20000})


WRITERS = {"checkpoint_latest.pth": _write_checkpoint, "voco_encoder.pth": _write_encoder,
           "pretrained_network.pth": _write_network, "config.json": _write_config, "metrics.jsonl": _write_metrics,
           "training_log.txt": _write_log, "progress.png": _write_progress, "voco_pool.json": _write_pool_json}


@pytest.mark.parametrize("fault", ["full", "read-only"])
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_write_on_a_real_full_or_read_only_disk_is_one_clear_error(tmpfs, name, fault):
    disk = tmpfs(4)
    folder = os.path.join(disk.path, "run")
    os.makedirs(folder)
    WRITERS[name](folder, 1)
    before = open(os.path.join(folder, name), "rb").read()
    if fault == "full":
        disk.fill(keep=2048)
    else:
        disk.read_only()
    with pytest.raises(DiskWriteError) as info:
        WRITERS[name](folder, 2)
    message = str(info.value)
    reason = "No space left on device" if fault == "full" else "Read-only file system"
    assert message.startswith(f"cannot write {os.path.join(folder, name)}") and f"({reason})" in message, message
    assert "\n" not in message
    assert open(os.path.join(folder, name), "rb").read() == before  # nothing lost, not even half a line
    assert _temp_files(folder) == []


@pytest.mark.parametrize("name", ["metrics.jsonl", "training_log.txt"])
def test_append_into_a_vanished_folder_names_the_folder(tmp_path, name):
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    shutil.rmtree(folder)
    with pytest.raises(DiskWriteError, match=f"its folder {folder} no longer exists"):
        WRITERS[name](folder, 1)


def test_checkpoint_on_a_full_disk_names_the_step_and_what_survived(tmpfs):
    disk = tmpfs(4)
    _write_checkpoint(disk.path, 1)
    disk.fill(keep=2048)
    model, optimizer = _small_state()
    path = os.path.join(disk.path, run_state.LATEST)
    with pytest.raises(DiskWriteError) as info:
        run_state.save_state(path, 2, model, optimizer, None, PretrainConfig(datasets=("1",)), {})
    assert str(info.value) == (f"cannot write {path} at step 2 (No space left on device); the previous file is "
                               f"intact; free space on that disk (or pass -o elsewhere) and resume with --c")
    assert load_file(path)["step"] == 1


# ============ voco_pretrain on a real full disk (the issue's reproduction) ============
@pytest.fixture(scope="module")
def run_bytes(planned_toy, tmp_path_factory) -> tuple[int, int]:
    """Bytes of checkpoint_latest.pth and of the small files of a run with the flags below (measured, so
    that a tmpfs can be sized to hold one checkpoint but not two)."""
    out = str(tmp_path_factory.mktemp("size") / "run")
    run = _command(["voco_pretrain", "-d", str(TOY_ID), "-o", out, "--num_steps", "2", "--save_every", "2",
                    "--log_every", "100"] + FAST, planned_toy)
    assert run.returncode == 0, run.stderr[-3000:]
    small = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
                if f.endswith((".json", ".jsonl", ".txt", ".png")))
    return os.path.getsize(os.path.join(out, run_state.LATEST)), small


@pytest.mark.slow
def test_voco_pretrain_on_a_full_disk_exits_3_with_one_line_and_keeps_the_checkpoint(planned_toy, tmpfs, run_bytes):
    checkpoint, small = run_bytes
    disk = tmpfs((1.5 * checkpoint + 2 * small) / 2 ** 20 + 0.25)  # one checkpoint and the small files fit, two not
    out = os.path.join(disk.path, "run")
    run = _command(["voco_pretrain", "-d", str(TOY_ID), "-o", out, "--num_steps", "6", "--save_every", "2",
                    "--log_every", "100"] + FAST, planned_toy)
    assert run.returncode == EXIT_CODE, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(f"voco_pretrain: error: cannot write {out}/checkpoint_latest.pth at step 4 (No space "
                                 f"left on device); the previous file is intact"), run.stderr
    assert load_file(os.path.join(out, run_state.LATEST))["step"] == 2
    assert _temp_files(out) == [] and not os.path.exists(os.path.join(out, outputs.LOCK_FILE))


@pytest.mark.slow
def test_voco_pretrain_into_a_read_only_folder_exits_3_before_training(planned_toy, tmpfs):
    disk = tmpfs(4)
    disk.read_only()
    out = os.path.join(disk.path, "run")
    run = _command(["voco_pretrain", "-d", str(TOY_ID), "-o", out, "--num_steps", "2"] + FAST, planned_toy)
    assert run.returncode == EXIT_CODE and run.stderr.count("\n") == 1, run.stderr
    assert f"cannot write {out}/{outputs.LOCK_FILE} (Read-only file system)" in run.stderr


# ============ voco_preprocess_unlabeled on a real full disk ============
@pytest.fixture
def pool_env(planned_toy, tmpfs):
    """nnUNet_preprocessed on a 6 MB tmpfs holding the toy TARGET's plans; input = the toy's raw images."""
    disk = tmpfs(6)
    target = os.path.join(planned_toy["nnUNet_preprocessed"], TOY_NAME)
    os.makedirs(os.path.join(disk.path, TOY_NAME))
    for name in ("nnUNetPlans.json", "dataset.json"):
        shutil.copy(os.path.join(target, name), os.path.join(disk.path, TOY_NAME, name))
    env = {**planned_toy, "nnUNet_preprocessed": disk.path}
    return env, disk, os.path.join(planned_toy["nnUNet_raw"], TOY_NAME, "imagesTr")


@pytest.mark.slow
def test_pool_on_a_full_disk_exits_3_and_keeps_finished_cases(pool_env):
    env, disk, images = pool_env
    cmd = ["voco_preprocess_unlabeled", "-i", images, "-d", str(TOY_ID), "-o", "881", "-np", "1"]
    first = _command(cmd, env)  # all fit
    assert first.returncode == 0, first.stderr
    pool = os.path.join(disk.path, "Dataset881_VoCoToyUnlabeled")
    data = os.path.join(pool, "nnUNetPlans_3d_fullres")
    victim = sorted(f for f in os.listdir(data) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))[0][:-5]
    for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
        os.remove(os.path.join(data, victim + suffix))
    disk.fill(keep=4096)
    again = _command(cmd, env)
    assert again.returncode == EXIT_CODE, again.stdout[-2000:] + again.stderr[-2000:]
    err = [line for line in again.stderr.splitlines() if line.startswith("voco_preprocess_unlabeled: error:")]
    assert len(err) == 1 and "Traceback" not in again.stderr, again.stderr
    assert f"cannot write {data}/{victim}.b2nd (No space left on device); finished cases are kept" in err[0]
    from nnunet_voco.pool.provenance import read_pool_provenance

    cases = len(os.listdir(images))
    assert read_pool_provenance(pool)["num_cases"] in (cases, cases - 1)  # whole: the old record, or the new one
    assert not os.path.exists(os.path.join(pool, ".voco_tmp"))
    assert not [f for f in os.listdir(pool) if ".tmp" in f]


# ============ truncated and unusable inputs ============
def _volume(shape=(20, 40, 36), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 20, shape) - 500).astype(np.float32)


def _write_image(path, array, spacing=(0.8, 0.8, 2.5), compress=None):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[:array.ndim])
    sitk.WriteImage(image, path, useCompression=bool(compress))


FORMATS = [("a.nii.gz", True), ("a.nii", False), ("a.nrrd", False), ("gz.nrrd", True), ("a.mha", False),
           ("z.mha", True)]


@pytest.mark.parametrize("name, compress", FORMATS)
@pytest.mark.parametrize("keep", [0.01, 0.3, 0.9, -1])
def test_truncated_file_of_every_format_is_refused(tmp_path, name, compress, keep):
    path = str(tmp_path / name)
    _write_image(path, _volume(), compress=compress)
    input_checks.verify_file(path)  # the intact file passes
    cut = os.path.getsize(path) - 1 if keep == -1 else int(os.path.getsize(path) * keep)
    with open(path, "r+b") as f:
        f.truncate(cut)
    with pytest.raises(ValueError, match=r"^(truncated|unreadable): "):
        input_checks.verify_file(path)


def test_the_issue_case_3000_bytes_of_a_real_nii_gz(tmp_path):
    import SimpleITK as sitk

    path = str(tmp_path / "cut.nii.gz")
    _write_image(path, _volume((60, 80, 80)), compress=True)
    with open(path, "r+b") as f:
        f.truncate(3000)
    read = sitk.GetArrayFromImage(sitk.ReadImage(path))  # SimpleITK itself does not complain...
    assert read.shape == (60, 80, 80) and (read == 0).mean() > 0.9
    with pytest.raises(ValueError, match="truncated: the compressed stream ends early after 3000 bytes"):
        input_checks.verify_file(path)  # ...the pool does


def _declares_more_than_it_holds(path):
    """A .nii whose header declares 40 slices but the file holds 20 (a partial export)."""
    _write_image(path, _volume(), compress=False)
    with open(path, "r+b") as f:
        f.seek(40 + 2 * 3)
        f.write(np.int16(40).tobytes())


@pytest.mark.parametrize("array, spacing, reason", [
    (np.full((1, 20, 40, 36), -1000.0, np.float32), (1, 1, 1), "constant image: every voxel of channel 0 is -1000"),
    (np.where(np.arange(20 * 40 * 36).reshape(1, 20, 40, 36) == 7, np.nan, 1.0), (1, 1, 1), "NaN or infinite"),
    (np.where(np.arange(20 * 40 * 36).reshape(1, 20, 40, 36) == 7, -np.inf, 1.0), (1, 1, 1), "NaN or infinite"),
    (_volume()[None], (1, float("nan"), 1), "implausible spacing"),
    (_volume()[None], (1, 1, 0), "implausible spacing"),
    (_volume()[None], (1, 1, 1e6), "implausible spacing"),
    (_volume((1, 40, 36))[None], (1, 1, 1), "2-D image"),
])
def test_unusable_volume_is_refused(array, spacing, reason):
    with pytest.raises(ValueError, match=reason):
        input_checks.check_volume(array, spacing, 1)


def test_pool_skips_and_lists_every_bad_input(planned_toy, tmp_path, monkeypatch):
    from nnunet_voco.pool.create import create_unlabeled_pool
    from nnunet_voco.pool.provenance import read_pool_provenance

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_toy[key])
    folder = tmp_path / "in"
    folder.mkdir()
    _write_image(str(folder / "good.nii.gz"), _volume(), compress=True)
    _write_image(str(folder / "cut.nii.gz"), _volume(seed=1), compress=True)
    with open(folder / "cut.nii.gz", "r+b") as f:
        f.truncate(3000)
    _declares_more_than_it_holds(str(folder / "partial.nii"))
    _write_image(str(folder / "blank.nrrd"), np.zeros((20, 40, 36), np.float32))
    _write_image(str(folder / "nan.mha"), np.where(_volume() > -500, np.nan, _volume()))
    _write_image(str(folder / "flat.nii.gz"), _volume((40, 36)))
    _write_image(str(folder / "absurd.nii.gz"), _volume(), spacing=(1e-5, 1, 1))
    report = create_unlabeled_pool([str(folder)], TOY_ID, 882, progress=False)
    reasons = {os.path.basename(s["file"]): s["reason"] for s in report.skipped}
    assert report.written == ["good"], reasons
    assert reasons["cut.nii.gz"].startswith("truncated: the compressed stream ends early")
    assert reasons["partial.nii"].startswith("truncated: the header declares")
    assert reasons["blank.nrrd"].startswith("constant image")
    assert reasons["nan.mha"] == "image contains NaN or infinite values"
    assert reasons["flat.nii.gz"].startswith("2-D image")
    assert reasons["absurd.nii.gz"].startswith("implausible spacing")
    summary = report.summary()
    assert "1 cases written, 6 skipped" in summary and all(f"  {folder / n}: " in summary for n in reasons)
    assert read_pool_provenance(report.folder)["skipped"] == report.skipped


def _entries_that_are_no_image_files(folder) -> dict:
    """Real entries named like images that cannot be read as one: name -> the start of the expected reason."""
    os.symlink("/mnt/voco_unmounted_share/scan_017.nii.gz", folder / "share_017.nii.gz")  # the drive is not mounted
    os.symlink("loop_b.nii.gz", folder / "loop_a.nii.gz")
    os.symlink("loop_a.nii.gz", folder / "loop_b.nii.gz")
    (folder / "folder.nii.gz").mkdir()
    os.mkfifo(folder / "pipe.nrrd")  # opening it would block: it must never be opened
    shutil.copy(folder / "good.nii.gz", folder / "._good.nii.gz")  # a macOS copy's companion file
    return {"share_017.nii.gz": "dangling link to /mnt/voco_unmounted_share/scan_017.nii.gz; is the drive mounted?",
            "loop_a.nii.gz": "symbolic link loop (loop_a.nii.gz -> loop_b.nii.gz", "loop_b.nii.gz": "symbolic link loop",
            "folder.nii.gz": "a folder, not an image file (a DICOM series? pass --dicom)",
            "pipe.nrrd": "a named pipe, not an image file", "._good.nii.gz": "hidden file"}


def test_pool_lists_every_entry_named_like_an_image_that_is_not_read(planned_toy, tmp_path, monkeypatch):
    """Issue 21: a dangling link (an unmounted share) used to vanish: "3 cases written, 0 skipped"."""
    from nnunet_voco.pool.create import create_unlabeled_pool
    from nnunet_voco.pool.provenance import read_pool_provenance

    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned_toy[key])
    folder = tmp_path / "in"
    folder.mkdir()
    _write_image(str(folder / "good.nii.gz"), _volume(), compress=True)
    expected = _entries_that_are_no_image_files(folder)
    (folder / "notes.txt").write_text("not named like an image: ignored")
    report = create_unlabeled_pool([str(folder)], TOY_ID, 884, progress=False)
    reasons = {os.path.basename(s["file"]): s["reason"] for s in report.skipped}
    assert report.written == ["good"] and set(reasons) == set(expected), reasons
    assert all(reasons[name].startswith(start) for name, start in expected.items()), reasons
    summary = report.summary()
    assert "1 cases written, 6 skipped" in summary
    assert (f"  {folder / 'share_017.nii.gz'}: dangling link to /mnt/voco_unmounted_share/scan_017.nii.gz; is the "
            f"drive mounted?") in summary.splitlines()
    assert read_pool_provenance(report.folder)["skipped"] == report.skipped


def _without_root_privileges(cmd: list[str]) -> list[str]:
    """Tests run as root here, and root reads a chmod-000 file. Dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    from the bounding set (setpriv, util-linux) makes the permission bits bind again: a real EACCES."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a permission fault cannot be made real")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] + cmd


def test_pool_lists_an_unreadable_file_and_refuses_an_unlistable_folder(planned_toy, tmp_path):
    folder, closed = tmp_path / "in", tmp_path / "closed"
    folder.mkdir()
    closed.mkdir()
    _write_image(str(folder / "good.nii.gz"), _volume(), compress=True)
    shutil.copy(folder / "good.nii.gz", folder / "locked.nii.gz")
    os.chmod(folder / "locked.nii.gz", 0)
    os.chmod(closed, 0)
    cmd = [script("voco_preprocess_unlabeled"), "-i", str(folder), "-d", str(TOY_ID), "-o", "885", "-np", "1"]
    proc = subprocess.run(_without_root_privileges(cmd), env=planned_toy, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 cases written, 1 skipped" in proc.stdout
    assert f"  {folder / 'locked.nii.gz'}: not readable (Permission denied); check its permissions" in \
        proc.stdout.splitlines()
    cmd[2] = str(closed)
    proc = subprocess.run(_without_root_privileges(cmd), env=planned_toy, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        f"voco_preprocess_unlabeled: error: cannot list input folder {closed} (Permission denied); make it readable "
        f"or drop it from -i"), proc.stderr


# ============ one run per folder (real processes) ============
def _hold_lock(path: str, command: str = "voco_pretrain") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, path, command], stdout=subprocess.PIPE, encoding="utf-8",
                            errors="replace")
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_refuses_a_second_process_and_reports_a_killed_holder(tmp_path):
    path = str(tmp_path / "run" / ".voco.lock")
    holder = _hold_lock(path)
    try:
        with pytest.raises(folder_lock.FolderBusy, match=rf"is in use by voco_pretrain \(pid {holder.pid} on host "):
            folder_lock.acquire(path, "voco_pretrain")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = folder_lock.acquire(path, "voco_pretrain")
    assert f"stale lock of voco_pretrain (pid {holder.pid} on host" in lock.stale and "whose process is gone" in lock.stale
    assert json.load(open(path))["pid"] == os.getpid()
    lock.release()
    assert not os.path.exists(path)
    clean = folder_lock.acquire(str(tmp_path / "new" / ".voco.lock"), "voco_pretrain")
    assert clean.stale is None
    clean.release()
    assert not os.path.exists(tmp_path / "new")  # the folder it created, left empty, is removed again


def _wait(predicate, proc, what):
    deadline = time.monotonic() + 600
    while not predicate():
        assert proc.poll() is None and time.monotonic() < deadline, f"voco_pretrain ended before {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_second_voco_pretrain_on_one_folder_exits_2_and_a_killed_holder_is_reported(planned_toy, tmp_path):
    out = str(tmp_path / "run")
    argv = [script("voco_pretrain"), "-d", str(TOY_ID), "-o", out, "--save_every", "100000"] + FAST
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(argv + ["--num_steps", "100000"], env=planned_toy, stdout=log, stderr=subprocess.STDOUT)
    lock = os.path.join(out, outputs.LOCK_FILE)
    try:
        _wait(lambda: os.path.isfile(lock) and f'"pid": {first.pid}' in open(lock).read(), first, "taking the lock")
        for extra in (["--c"], []):
            second = subprocess.run(argv + ["--num_steps", "100000"] + extra, env=planned_toy, capture_output=True,
                                    encoding="utf-8", errors="replace", timeout=900)
            assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
            assert second.stderr.startswith(f"voco_pretrain: error: {out} is in use by voco_pretrain (pid {first.pid} "
                                            f"on host ") and second.stderr.count("\n") == 1, second.stderr
            assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert os.path.isfile(lock)  # SIGKILL leaves the file; the kernel released the lock
    third = _command(argv + ["--num_steps", "2", "--c"], planned_toy)
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    assert f"had a stale lock of voco_pretrain (pid {first.pid} on host" in third.stdout
    assert not os.path.exists(lock)


def test_second_pool_writer_exits_2(planned_toy, tmp_path):
    lock = os.path.join(planned_toy["nnUNet_preprocessed"], ".voco_pool_883.lock")
    holder = _hold_lock(lock, "voco_preprocess_unlabeled")
    try:
        run = subprocess.run([script("voco_preprocess_unlabeled"), "-i", os.path.join(planned_toy["nnUNet_raw"],
                              TOY_NAME, "imagesTr"), "-d", str(TOY_ID), "-o", "883"], env=planned_toy,
                             capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().startswith("voco_preprocess_unlabeled: error: ")
    assert f"Dataset883_VoCoToyUnlabeled is in use by voco_preprocess_unlabeled (pid {holder.pid}" in run.stderr
    assert not os.path.exists(os.path.join(planned_toy["nnUNet_preprocessed"], "Dataset883_VoCoToyUnlabeled"))


# ============ --c with another --num_steps ============
@pytest.mark.parametrize("step, new_end, probe, expected", [
    (6, 12, 6, lr_at(6, 1e-3, 2, 10, 1e-5)),  # continuous at the resume step
    (6, 12, 12, 1e-5),  # reaches min_lr at the new end
    (6, 12, 9, 1e-5 + (lr_at(6, 1e-3, 2, 10, 1e-5) - 1e-5) * 0.5),  # half-way: half of the remaining range
    (6, 8, 8, 1e-5),  # a shorter run ends at min_lr too
    (1, 20, 1, lr_at(1, 1e-3, 2, 20, 1e-5)),  # still warming up: the warm-up is kept...
    (1, 20, 11, lr_at(11, 1e-3, 2, 20, 1e-5)),  # ...and the cosine simply ends later
    (10, 14, 12, 1e-5),  # a finished run continues at min_lr (it has no schedule left to stretch)
])
def test_redefined_schedule_values(step, new_end, probe, expected):
    schedule = RunSchedule(1e-3, 1e-5, 2, 10, 0.9).ended_at(step, new_end)
    assert schedule.lr_at(probe) == pytest.approx(expected, rel=1e-12)


def test_redefined_momentum_ramp_is_continuous_and_ends_at_its_target():
    old = RunSchedule(1e-3, 1e-5, 2, 10, 0.9, 0.99)
    new = old.ended_at(5, 20)
    assert new.momentum_at(5) == pytest.approx(old.momentum_at(5))
    assert new.momentum_at(19) == pytest.approx(0.99) and new.momentum_at(12) < 0.99


def _config(**kw):
    return PretrainConfig(datasets=("1",), **{"num_steps": 8, **kw})


def test_resume_schedule_logs_a_change_keeps_a_kept_one_and_refuses_going_back():
    logged = []
    base, _ = run_state.resume_schedule(_config(), None, None, 0, 2, logged.append)
    assert base.schedule == RunSchedule(1e-4, 1e-6, 2, 8, 0.9).to_dict() and not logged
    extended, schedule = run_state.resume_schedule(_config(num_steps=12), base.to_dict(), "ck.pth", 4, 0, logged.append)
    assert logged == [f"VoCo: --num_steps changed from 8 to 12 on resume at step 4: the schedule is redefined from "
                      f"step 4: the learning rate continues from {lr_at(4, 1e-4, 2, 8, 1e-6):.4g} and follows a half "
                      f"cosine to --min_lr 1e-06 at step 12"]
    again, same = run_state.resume_schedule(_config(num_steps=12), extended.to_dict(), "ck.pth", 6, 0, logged.append)
    assert same == schedule and len(logged) == 1  # the redefined schedule is kept, silently: nothing changed
    with pytest.raises(ValueError, match=r"ck.pth is at step 6, beyond --num_steps 5; pass --num_steps 12"):
        run_state.resume_schedule(_config(num_steps=5), extended.to_dict(), "ck.pth", 6, 0, logged.append)


@pytest.mark.slow
def test_resume_with_more_steps_continues_the_learning_rate_curve(planned_toy, tmp_path):
    out = tmp_path / "run"
    argv = [script("voco_pretrain"), "-d", str(TOY_ID), "-o", str(out), "--warmup_steps", "2", "--save_every", "4",
            "--log_every", "1"] + FAST
    first = _command(argv + ["--num_steps", "8"], planned_toy)
    assert first.returncode == 0, first.stderr[-2000:]
    state = torch.load(out / run_state.LATEST, weights_only=True)  # make it the state of step 4 of 8
    state["step"] = 4
    torch.save(state, out / run_state.LATEST)
    os.remove(out / run_state.FINAL)
    refused = subprocess.run(argv + ["--num_steps", "12", "--c", "--lr", "2e-4"], env=planned_toy,
                             capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert refused.returncode == 2 and "trained with --lr 0.0001 but this run has --lr 0.0002" in refused.stderr
    second = _command(argv + ["--num_steps", "12", "--c"], planned_toy)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "--num_steps changed from 8 to 12 on resume at step 4: the schedule is redefined from step 4" in second.stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    rows = [r for r in rows if "lr" in r]
    expected = RunSchedule(1e-4, 1e-6, 2, 8, 0.9).ended_at(4, 12)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["lr"] for r in rows[:4]] == pytest.approx([lr_at(r["step"] - 1, 1e-4, 2, 8, 1e-6) for r in rows[:4]])
    assert [r["lr"] for r in rows[4:]] == pytest.approx([expected.lr_at(r["step"] - 1) for r in rows[4:]])
    assert rows[4]["lr"] == pytest.approx(lr_at(4, 1e-4, 2, 8, 1e-6))  # no jump at the resume step
    assert expected.lr_at(12) == pytest.approx(1e-6) and rows[-1]["lr"] < rows[4]["lr"] / 10  # ends at min_lr
    assert load_file(str(out / run_state.FINAL))["config"]["schedule"]["restart_step"] == 4
