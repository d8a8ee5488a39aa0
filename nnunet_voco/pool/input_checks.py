"""Verify unlabelled input images instead of trusting the reader.

SimpleITK reads a ``.nii.gz`` cut off after 3,000 bytes without an error, as a volume that is 99%
zeros. :func:`verify_file` therefore checks the file against its own header before it is read: a
gzip stream must reach its end marker (and its CRC must match), and the voxel data must be as long
as the header declares (NIfTI ``.nii``/``.nii.gz``/``.hdr``, NRRD ``.nrrd``/``.nhdr``, MetaImage
``.mha``/``.mhd``). :func:`check_volume` then checks what was read: channels, 3-D, size, spacing,
finite and not constant. Both raise ``ValueError`` with a one-line reason for the skip list.

Cost: one streaming pass over the file (gzip inflate without keeping the output) and one min/max
pass per channel; see the README section "Faults and how they are handled" for measured numbers.
"""
from __future__ import annotations

import math
import os
import re
import struct
import zlib

import numpy as np

MIN_AXIS_VOXELS = 8
MIN_SPACING_MM = 1e-3
MAX_SPACING_MM = 50.0
_CHUNK = 4 << 20  # compressed bytes read at a time
_MAX_OUT = 64 << 20  # decompressed bytes produced at a time (memory stays flat)
_NIFTI_HEADER_BYTES = 352
_MET_SIZES = {"CHAR": 1, "UCHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4, "LONG": 4, "ULONG": 4,
              "LONG_LONG": 8, "ULONG_LONG": 8, "FLOAT": 4, "DOUBLE": 8}


def verify_file(path: str) -> None:
    """Raise ValueError if ``path`` is truncated or holds less voxel data than its header declares.

    Formats without a known layout (TIFF, GIPL, DICOM, ...) pass; the reader and
    :func:`check_volume` judge them.
    """
    lower = path.lower()
    if lower.endswith(".nii.gz"):
        header, size = _inflate(path, 0, keep=_NIFTI_HEADER_BYTES)
        _check_length(size, *_nifti_layout(header))
    elif lower.endswith(".nii"):
        with open(path, "rb") as f:
            header = f.read(_NIFTI_HEADER_BYTES)
        _check_length(os.path.getsize(path), *_nifti_layout(header))
    elif lower.endswith(".hdr"):  # NIfTI pair / Analyze: voxel data in the .img beside it
        with open(path, "rb") as f:
            header = f.read(_NIFTI_HEADER_BYTES)
        image = path[:-4] + (".img" if path.endswith(".hdr") else ".IMG")
        offset, nbytes = _nifti_layout(header)
        _check_length(os.path.getsize(image) if os.path.isfile(image) else 0, max(offset, 0), nbytes)
    elif lower.endswith((".nrrd", ".nhdr")):
        _verify_nrrd(path)
    elif lower.endswith((".mha", ".mhd")):
        _verify_metaimage(path)
    elif lower.endswith(".gz"):
        _inflate(path, 0)


def check_volume(data: np.ndarray, spacing, num_channels: int) -> None:
    """Raise ValueError with a one-line reason if an image as read cannot be used for pre-training.

    Shapes:
        data: (C, X, Y, Z).
    """
    spatial = tuple(data.shape[1:])
    spacing = [float(s) for s in spacing]
    if data.ndim != 4 or data.shape[0] != num_channels:
        raise ValueError(f"wrong channel count: array shape {data.shape} has {data.shape[0]} channel(s), TARGET "
                         f"expects {num_channels}")
    if 1 in spatial:
        raise ValueError(f"2-D image (shape {spatial}); only 3-D volumes can be used")
    if min(spatial) < MIN_AXIS_VOXELS:
        raise ValueError(f"too small: shape {spatial}, need at least {MIN_AXIS_VOXELS} voxels per axis")
    if not all(math.isfinite(s) and MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise ValueError(f"implausible spacing {tuple(round(s, 4) for s in spacing)} mm; expected {MIN_SPACING_MM:g} "
                         f"<= spacing <= {MAX_SPACING_MM:g} mm")
    for c, channel in enumerate(data):
        low, high = float(channel.min()), float(channel.max())  # both propagate NaN; Inf shows in one
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("image contains NaN or infinite values")
        if low == high:
            raise ValueError(f"constant image: every voxel of channel {c} is {low:g} (blank or failed export)")


def _check_length(available: int, offset: int, nbytes: int) -> None:
    if available < offset + nbytes:
        raise ValueError(f"truncated: the header declares {offset + nbytes} bytes ({nbytes} of voxel data), the file "
                         f"holds {available} (cut off during a copy or download?)")


def _nifti_layout(header: bytes) -> tuple[int, int]:
    """``(voxel data offset, voxel data bytes)`` from a NIfTI-1/-2 or Analyze header."""
    if len(header) >= 348 and struct.unpack("<i", header[:4])[0] in (348, 540):
        endian = "<"
    elif len(header) >= 348 and struct.unpack(">i", header[:4])[0] in (348, 540):
        endian = ">"
    else:
        raise ValueError(f"unreadable: truncated or not NIfTI ({len(header)} header bytes, no valid sizeof_hdr)")
    if struct.unpack(endian + "i", header[:4])[0] == 540:
        if len(header) < 540 - 188:
            raise ValueError("truncated: incomplete NIfTI-2 header")
        bitpix = struct.unpack(endian + "h", header[14:16])[0]
        dims = struct.unpack(endian + "8q", header[16:80])
        offset = int(struct.unpack(endian + "q", header[168:176])[0])
    else:
        dims = struct.unpack(endian + "8h", header[40:56])
        bitpix = struct.unpack(endian + "h", header[72:74])[0]
        offset = int(struct.unpack(endian + "f", header[108:112])[0])
    if not 1 <= dims[0] <= 7 or any(d < 0 for d in dims[1:dims[0] + 1]) or bitpix <= 0:
        raise ValueError(f"corrupt NIfTI header (dim {list(dims)}, bitpix {bitpix})")
    return offset, int(np.prod([max(d, 1) for d in dims[1:dims[0] + 1]], dtype=np.int64)) * bitpix // 8


def _inflate(path: str, start: int, keep: int = 0, wbits: int = 16 + zlib.MAX_WBITS) -> tuple[bytes, int]:
    """Inflate the compressed stream(s) of ``path`` from byte ``start`` without keeping the output.

    Returns:
        ``(first keep decompressed bytes, decompressed size)``.

    Raises:
        ValueError: the stream ends before its end marker, or its data or checksum is corrupt.
    """
    kept, size, decoder, data = b"", 0, zlib.decompressobj(wbits), b""
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            if not data:
                data = f.read(_CHUNK)
                if not data:
                    break
            if decoder.eof:
                data = data.lstrip(b"\0")  # padding after the last gzip member
                if not data:
                    continue
                if wbits <= zlib.MAX_WBITS:
                    break  # one zlib stream (MetaImage); what follows is not ours
                decoder = zlib.decompressobj(wbits)  # a further gzip member (concatenated files)
            try:
                out = decoder.decompress(data, _MAX_OUT)
            except zlib.error as e:
                raise ValueError(f"unreadable: corrupt compressed data ({e})") from None
            size += len(out)
            if len(kept) < keep:
                kept += out[:keep - len(kept)]
            data = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
        if not decoder.eof:
            raise ValueError(f"truncated: the compressed stream ends early after {os.path.getsize(path)} bytes "
                             f"({size} bytes inflated; cut off during a copy or download?)")
    return kept, size


def _read_text_header(path: str, end: re.Pattern, eof_ends: bool = False) -> tuple[dict, int]:
    """``key -> value`` of a text header and the byte offset right after it (``end``, or the end of a
    detached header file when ``eof_ends``, ends it)."""
    fields, offset = {}, 0
    with open(path, "rb") as f:
        while offset < 1 << 20:
            raw = f.readline(1 << 16)
            if not raw:
                if eof_ends:
                    return fields, offset
                break
            offset += len(raw)
            line = raw.decode("latin-1").rstrip("\r\n")
            if end.match(line):
                if line.strip():
                    key, _, value = re.split(r"(:=|:|=)", line, maxsplit=1)
                    fields[key.strip().lower()] = value.strip()
                return fields, offset
            if line.startswith("#") or not line.strip():
                continue
            parts = re.split(r"(:=|:|=)", line, maxsplit=1)
            if len(parts) == 3:
                fields[parts[0].strip().lower()] = parts[2].strip()
    raise ValueError("truncated: the header has no end (or is not a header)")


def _nrrd_type_size(name: str) -> int | None:
    name = " ".join(name.lower().replace("_t", "").split())
    if name in ("float", "double"):
        return 4 if name == "float" else 8
    for bits in (8, 16, 32, 64):
        if name.endswith(str(bits)):
            return bits // 8
    if "char" in name:
        return 1
    if "short" in name:
        return 2
    if "long long" in name or "longlong" in name:
        return 8
    return 4 if name in ("int", "signed int", "uint", "unsigned int") else None


def _verify_nrrd(path: str) -> None:
    fields, offset = _read_text_header(path, re.compile(r"^\s*$"), eof_ends=path.lower().endswith(".nhdr"))
    size = _nrrd_type_size(fields.get("type", ""))
    sizes = [int(v) for v in fields.get("sizes", "").split() if v.lstrip("-").isdigit()]
    data_file = fields.get("data file") or fields.get("datafile")
    encoding = fields.get("encoding", "raw").lower()
    if size is None or not sizes:
        return
    nbytes = size * int(np.prod(sizes, dtype=np.int64))
    if data_file:
        if data_file.startswith("LIST") or "%" in data_file:
            return  # several files: left to the reader
        path, offset = os.path.join(os.path.dirname(path), data_file), 0
        if not os.path.isfile(path):
            raise ValueError(f"data file {data_file} of the NRRD header is missing")
    skip = int(fields.get("byte skip", "0"))
    if encoding == "raw":
        _check_length(os.path.getsize(path), offset + max(skip, 0), nbytes)
    elif encoding in ("gzip", "gz"):
        _check_length(_inflate(path, offset)[1], max(skip, 0), nbytes)


def _verify_metaimage(path: str) -> None:
    fields, offset = _read_text_header(path, re.compile(r"^\s*ElementDataFile\s*=", re.IGNORECASE))
    element = fields.get("elementtype", "").upper().replace("MET_", "").replace("_ARRAY", "")
    dims = [int(v) for v in fields.get("dimsize", "").split() if v.isdigit()]
    if element not in _MET_SIZES or not dims:
        return
    nbytes = _MET_SIZES[element] * int(fields.get("elementnumberofchannels", "1")) * int(np.prod(dims, dtype=np.int64))
    data_file = fields.get("elementdatafile", "LOCAL")
    if data_file.upper() != "LOCAL":
        if data_file.upper().startswith("LIST") or "%" in data_file:
            return
        path, offset = os.path.join(os.path.dirname(path), data_file), 0
        if not os.path.isfile(path):
            raise ValueError(f"data file {data_file} of the MetaImage header is missing")
    if fields.get("compresseddata", "false").lower() == "true":
        _check_length(_inflate(path, offset, wbits=zlib.MAX_WBITS)[1], 0, nbytes)
    else:
        _check_length(os.path.getsize(path), offset, nbytes)
