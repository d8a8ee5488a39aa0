"""Make nnU-Net find our trainers without set-up: the ``nnUNet_extTrainer`` start-up hook.

nnU-Net >= 2.8 looks for trainers it does not ship in the folders listed in ``nnUNet_extTrainer``.
A regular ``pip install`` puts ``nnunet_voco.pth`` (one line: ``import _nnunet_voco_autoload``) into
site-packages, and the hook appends our shim folder to the variable at every interpreter start.
An editable install (PEP 660) does not install ``data_files``, so every ``voco_*`` command calls
:func:`ensure_startup_hook`, which writes the same ``.pth`` file once and says so.

Fallback without the hook: ``export nnUNet_extTrainer=$(python -c "import nnunet_voco.trainers.discovery as d;
print(d.shim_folder())")``.
"""
from __future__ import annotations

import os
import sys
import sysconfig

PTH_NAME = "nnunet_voco.pth"
SHIM_FOLDER = "nnunet_shim"  # inside nnunet_voco.trainers; nnU-Net imports its modules under bare names


def shim_folder() -> str:
    """The folder nnU-Net must scan: it holds only a module re-exporting ``nnunet_voco.trainers``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), SHIM_FOLDER)


def _pth_line() -> str:
    # Self-contained (no import of our hook module needed, which editable installs may not map).
    shim = shim_folder()
    return ("import os; _v = [p for p in os.environ.get('nnUNet_extTrainer', '').split(os.pathsep) if p]; "
            f"os.environ['nnUNet_extTrainer'] = os.pathsep.join(_v + ([{shim!r}] if {shim!r} not in _v else []))\n")


def register_in_environment() -> None:
    """Append the shim folder to ``nnUNet_extTrainer`` in this process (keeps the user's entries)."""
    parts = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if shim_folder() not in parts:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(parts + [shim_folder()])


def ensure_startup_hook(quiet: bool = False) -> str | None:
    """Install ``nnunet_voco.pth`` into site-packages if no hook is there yet; returns its path.

    Keeps a hook file that is already there (regular installs ship one) unless it is one of ours
    pointing at another shim folder (an older layout or checkout), which is rewritten. Never raises: a
    read-only site-packages only costs the automatic discovery, and the message says what to do.
    """
    register_in_environment()
    site = sysconfig.get_paths()["purelib"]
    path = os.path.join(site, PTH_NAME)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                current = f.read()
        except OSError:
            return path
        if "_nnunet_voco_autoload" in current or current == _pth_line() or "nnUNet_extTrainer" not in current:
            return path
    try:
        with open(path + ".tmp", "w") as f:
            f.write(_pth_line())
        os.replace(path + ".tmp", path)
    except OSError as e:
        if not quiet:
            print(f"nnunet-voco: could not install the trainer-discovery hook in {site} ({e}); export "
                  f"nnUNet_extTrainer={shim_folder()} before nnUNetv2_train", file=sys.stderr)
        return None
    if not quiet:
        print(f"nnunet-voco: installed {path} so that nnUNetv2_train/predict find the VoCo trainers "
              f"(nnUNet_extTrainer is extended at start-up; your own value is kept)", file=sys.stderr)
    return path
