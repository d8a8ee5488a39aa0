"""``voco_import_weights``: convert a released VoCo Swin checkpoint into ``voco_encoder.pth``.

Example::

    voco_import_weights VoCo_B_SSL_head.pt -o voco_encoder.pth
    voco_import_weights VoComni_B.pt -o voco_encoder.pth --in_channels 2
"""
from __future__ import annotations

import argparse
import sys

from nnunet_voco.command_exit import run_command

PROG = "voco_import_weights"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert an official VoCo Swin release (VoCo_{B,L,H}_SSL_head.pt or VoComni_{B,L,H}.pt) "
                    "into an nnunet-voco voco_encoder.pth for nnUNetTrainerVoCoSwin. Only the encoder "
                    "(swinViT, encoder1-4, encoder10) is kept. The file is read with weights_only=True.",
    )
    parser.add_argument("file", help="released checkpoint (.pt/.pth)")
    parser.add_argument("-o", "--output", required=True, help="output file, e.g. voco_encoder.pth")
    parser.add_argument("--in_channels", type=int, default=None,
                        help="input channels of the downstream data; if it differs from the file's (1), the "
                             "first convolutions are adapted (kernels summed over input channels, divided "
                             "by the new count). Default: keep the file's")
    parser.add_argument("--feature_size", type=int, default=None,
                        help="expected feature size (48 = B, 96 = L, 192 = H); default: read from the file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit code (0 done, 2 the file cannot be converted, 3 disk full / not
    writable; :mod:`nnunet_voco.command_exit`)."""
    parser = _parser()
    args = parser.parse_args(argv)
    for flag, value in (("--in_channels", args.in_channels), ("--feature_size", args.feature_size)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")

    def convert() -> None:
        from nnunet_voco.official_weights import import_official

        report = import_official(args.file, args.output, args.in_channels, args.feature_size)
        arch = report.meta["architecture"]
        print(report.summary())
        print(f"wrote {args.output} (swin, feature size {arch['feature_size']}, {arch['in_channels']} input channels)")

    # a file torch cannot read (RuntimeError, OSError) is bad input here, not a failure of the command
    return run_command(PROG, convert, bad_input=(OSError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
