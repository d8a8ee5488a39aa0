"""``voco_import_weights``: any known checkpoint in, our ``voco_encoder.pth`` out (DESIGN.md section 8).

Detection, in order, after a safe read (:func:`nnunet_voco.weights.reading.read_checkpoint`):

1. our own ``voco_encoder.pth`` (format field): passed through with the import recorded;
2. a VoCo / SwinUNETR release (``swinViT`` keys): :mod:`nnunet_voco.weights.swin_release`;
3. nnssl, with the plan embedded, beside it, or none: :mod:`nnunet_voco.weights.nnssl_format`;
4. nnU-Net's own checkpoint: :mod:`nnunet_voco.weights.nnunet_format`;
5. a bare dynamic-network-architectures state dict or ``VoComni_nnunet.pt``: :mod:`nnunet_voco.weights.dna_format`.

The CNN encoder is kept in the source's own topology (stages, kernels, channels unless
``in_channels`` is given): adapting it to a dataset is the job of the trainers and of ``--init``
(:mod:`nnunet_voco.weights.adaptation`), which see the target network. Before anything is written the
tensors are checked against the architecture (declared, or read from the shapes) by rebuilding the
encoder on the meta device; every tensor of the file is counted in :class:`ImportResult.tally`.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from nnunet_voco.artifacts import write_encoder
from nnunet_voco.checkpoint import ENCODER_FORMAT, STATE_FORMAT, adapt_input_channels, check_schema
import nnunet_voco.weights.architecture as archs
from nnunet_voco.weights.citations import default_citations
from nnunet_voco.weights.dna_format import bare_state, is_dna_state, read_dna_state
from nnunet_voco.weights.encoder_state import Tally, to_unique, verify_encoder, with_aliases
from nnunet_voco.weights.nnssl_format import is_nnssl, read_nnssl
from nnunet_voco.weights.nnunet_format import is_nnunet_checkpoint, read_nnunet_checkpoint
from nnunet_voco.weights.reading import WeightsFileError, read_checkpoint, read_sidecar_plan, resolve_source, file_digests
from nnunet_voco.weights.source import SourceWeights
from nnunet_voco.weights.swin_release import convert_official, is_swin_state


@dataclasses.dataclass
class ImportResult:
    """An imported encoder, ready to be written as ``voco_encoder.pth``."""

    encoder: dict[str, torch.Tensor]
    heads: dict[str, dict[str, torch.Tensor]]
    meta: dict
    tally: Tally
    notes: list = dataclasses.field(default_factory=list)  # format-specific lines (the Swin import's summary)

    def lines(self) -> list[str]:
        """What the command prints: format, architecture, pre-training facts, tensor counts."""
        m, imp = self.meta, self.meta["imported"]
        arch = (archs.describe(m["architecture"], m.get("strides_inferred", False)) if m["encoder_family"] == "cnn"
                else f"SwinUNETR-v2, feature size {m['architecture'].get('feature_size')}")
        facts = ", ".join(f"{k} {imp[k]}" for k in ("pretrain_dataset", "spacing", "spacing_style",
                                                    "normalization_schemes", "patch_size", "input_channels")
                          if imp.get(k) not in (None, []))
        return [f"format: {imp['source_format']} ({imp['source_file']}), trainer {imp.get('trainer_name') or 'not recorded'}, "
                f"sha256 {imp['sha256'][:16]}...{' (read with the numpy allow-list)' if imp.get('numpy_allow_list') else ''}",
                f"architecture: {arch} [from {imp.get('architecture_source')}]",
                f"pre-training: {facts or 'nothing recorded in the file'}",
                f"tensors: {self.tally.summary()}"] + list(self.notes)


def import_weights(path: str, in_channels: int | None = None, feature_size: int | None = None) -> ImportResult:
    """Read ``path`` (a file or a downloaded folder) and convert it (see the module docstring).

    Args:
        path: the checkpoint or its folder.
        in_channels: adapt the first convolution to this many input channels now (the trainers also do
            it at load time); None keeps the file's.
        feature_size: Swin files only: the expected feature size (None: read from the file).

    Raises:
        WeightsFileError / ArchitectureError (both UserInputError): unreadable, unknown or unsupported
            file, no encoder tensors, Primus, 2-D; the message is one line naming the fix.
    """
    if in_channels is not None and in_channels < 1:
        raise WeightsFileError(f"--in_channels {in_channels}: the input-channel rule needs at least 1 target channel; "
                               f"pass the number of channels of your dataset (len(channel_names) in dataset.json)")
    file = resolve_source(path)
    obj, numpy_used = read_checkpoint(file)
    record = {"source_file": os.path.abspath(file), **file_digests(file), "numpy_allow_list": numpy_used}
    if obj.get("format") == STATE_FORMAT:
        raise WeightsFileError(f"{file} is a voco_pretrain training state; import the voco_encoder.pth beside it (or pass "
                               f"the run folder), or use it directly: nnUNet_voco_weights / voco_pretrain --init")
    if isinstance(obj.get("meta"), dict) and "encoder" in obj and obj["meta"].get("format") == ENCODER_FORMAT:
        return _own(obj, file, record, in_channels)
    if is_swin_state(obj):
        return _swin(obj, file, record, in_channels, feature_size)
    if feature_size is not None:
        raise WeightsFileError(f"--feature_size applies to SwinUNETR files only and {file} is not one; drop it")
    sidecar = read_sidecar_plan(file)
    if is_nnssl(obj, sidecar):
        source = read_nnssl(obj, file, sidecar)
    elif is_nnunet_checkpoint(obj):
        source = read_nnunet_checkpoint(obj, file)
    elif is_dna_state(bare_state(obj)):
        source = read_dna_state(obj, file)
    else:
        n = sum(1 for v in bare_state(obj).values())
        raise WeightsFileError(
            f"{file} holds no encoder tensors ({n} tensors, none under encoder./stem./stages./swinViT.); pass an nnssl "
            f"or nnU-Net checkpoint, a ResEnc / PlainConvUNet state dict or a VoCo release")
    return _convert(source, file, record, in_channels)


def _convert(source: SourceWeights, file: str, record: dict, in_channels: int | None) -> ImportResult:
    if not source.encoder:
        raise WeightsFileError(f"{file} ({source.format}) holds no encoder tensors ({source.tally.summary()}); it is "
                               f"a decoder-only or head-only file: pass the checkpoint with the pre-trained encoder")
    arch, inferred = (source.architecture, False) if source.architecture else archs.infer_architecture(source.encoder)
    archs.family_of(arch)  # raises for any class but ResidualEncoderUNet / PlainConvUNet
    c_src = archs.input_channels(source.encoder, arch)
    verify_encoder(source.encoder, arch, c_src, file)
    unique = to_unique(source.encoder, archs.build_encoder(arch, c_src), file)
    c_out = c_src if in_channels is None else int(in_channels)
    in_proj = archs.IN_PROJ[archs.family_of(arch)]
    if c_out != c_src:
        unique[in_proj[0] + ".weight"] = adapt_input_channels(unique[in_proj[0] + ".weight"], c_out)
    encoder = with_aliases(unique, archs.build_encoder(arch, c_out))
    source.tally.add("encoder (stem + stages)", len(unique), "imported")
    source.tally.add("encoder alias keys (the same tensors)", len(source.encoder) - len(unique), "imported")
    heads = _checked_heads(source, arch)
    facts = dict(source.facts, input_channels=source.facts.get("input_channels") or c_src)
    record.update(source_format=source.format, trainer_name=source.trainer_name,
                  architecture_source=source.architecture_source, tensors=source.tally.to_dict(), **facts)
    meta = {
        "encoder_family": "cnn", "architecture": arch, "strides_inferred": inferred, "key_to_encoder": "encoder",
        "encoder_key_prefixes": [""], "keys_to_in_proj": in_proj, "num_input_channels": c_out,
        "source_in_channels": c_src, "plans_name": None, "configuration": None, "dataset_name": None,
        "datasets": None, "spacing": facts.get("spacing"), "normalization_schemes": facts.get("normalization_schemes"),
        "patch_size": facts.get("patch_size"), "crop_size": facts.get("patch_size"),
        "pretrained_on": facts.get("pretrain_dataset") or source.format, "preset": source.trainer_name,
        "steps": None, "imported": record, "citations": source.citations,
        "heads": {name: _head_dims(h) for name, h in heads.items()},
    }
    return ImportResult(encoder, heads, meta, source.tally)


def _head_dims(head: dict) -> list[int]:
    return [int(head["0.weight"].shape[1])] + [int(head[f"{i}.weight"].shape[0]) for i in (0, 3, 6)]


def _checked_heads(source: SourceWeights, arch: dict) -> dict:
    head = source.heads.get("projector")
    if not head:
        return {}
    expected = ("0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias")
    embedding = sum(arch["arch_kwargs"]["features_per_stage"])
    if set(head) != set(expected) or int(head["0.weight"].shape[1]) != embedding:
        source.tally.groups.pop("VoCo projector", None)
        source.tally.add("VoCo projector (unexpected layout)", len(head), "skipped")
        return {}
    return {"projector": head}


def _own(obj: dict, file: str, record: dict, in_channels: int | None) -> ImportResult:
    check_schema(obj, file, ENCODER_FORMAT)
    meta, encoder = dict(obj["meta"]), dict(obj["encoder"])
    tally = Tally()
    for group, entry in ((meta.get("imported") or {}).get("tensors") or {}).items():  # the original import's
        tally.add(group, entry["count"], entry["action"])
    if not tally.groups:
        tally.add("encoder state-dict keys", len(encoder), "imported")
    if in_channels is not None and in_channels != meta.get("num_input_channels"):
        raise WeightsFileError(f"{file} is already an nnunet-voco encoder; its input channels are adapted when it is "
                               f"loaded, so drop --in_channels")
    heads = obj.get("heads") or {}
    if not meta.get("imported"):
        for name, head in heads.items():
            tally.add(f"{name} head", len(head), "kept for voco_pretrain --init")
    record.update(source_format="nnunet-voco encoder", trainer_name=meta.get("preset"),
                  architecture_source="nnunet-voco metadata", pretrain_dataset=", ".join(meta.get("datasets") or [])
                  or meta.get("pretrained_on"), spacing=meta.get("spacing"),
                  normalization_schemes=meta.get("normalization_schemes"), patch_size=meta.get("crop_size"),
                  input_channels=meta.get("num_input_channels"), tensors=tally.to_dict())
    notes = [f"file: an nnunet-voco encoder ({file}); the import record above is the original one"] \
        if meta.get("imported") else []
    meta.setdefault("imported", record)
    meta.setdefault("citations", default_citations("nnunet-voco encoder", None))
    return ImportResult(encoder, heads, meta, tally, notes)


def _swin(obj: dict, file: str, record: dict, in_channels: int | None, feature_size: int | None) -> ImportResult:
    report = convert_official(file, in_channels, feature_size, raw=obj)
    tally = Tally()
    tally.add("Swin encoder", len(report.encoder) - len(report.filled), "imported")
    for module, n in sorted(report.skipped.items()):
        tally.add(module, n, "skipped")
    meta = dict(report.meta)
    record.update(source_format="VoCo Swin release", trainer_name="VoCo (official)",
                  architecture_source="patch embedding shape", pretrain_dataset=meta.get("pretrained_on"),
                  input_channels=meta["architecture"].get("source_in_channels"), tensors=tally.to_dict(),
                  derived_buffers_filled=len(report.filled))
    meta.update(imported=record, citations=default_citations("VoCo Swin release", "VoCo"))
    return ImportResult(report.encoder, {}, meta, tally, [report.summary()])


def write_imported(result: ImportResult, output: str, source: str) -> dict:
    """Write ``output`` (+ its ``.json`` sidecar) atomically; refuses to overwrite the source itself."""
    if os.path.exists(output) and os.path.samefile(output, resolve_source(source)):
        raise WeightsFileError(f"-o {output} is the source file itself; write the import to another path")
    return write_encoder(output, result.encoder, result.meta, result.heads)
