"""``voco_export_weights``: our encoder out in the nnssl layout that nnU-Net master reads (ECOSYSTEM_WEIGHTS.md 6.3).

Written into the output folder (each file atomically)::

    checkpoint_final.pth   {"network_weights": {"encoder." + key: tensor} (+ "projector.layer{1,2,3}.0.*"),
                            "nnssl_adaptation_plan": PLAN, "trainer_name", "init_args": {}, "citations"}
    adaptation_plan.json   PLAN + trainer_name
    config.json            a small description (nnU-Net master's Hugging Face download wants the file)
    README.md              a model card: data, spacing, normalisation, patch, citations

PLAN has nnssl's 8 fields: ``architecture_plans`` (``ResEncL`` when the encoder is nnssl's fixed ResEncL,
else the short class name with the plans' kwargs), ``pretrain_plan`` (the 8 plan keys with one
configuration of the 11 ConfigurationPlan keys, from our plans file when it is found, else from the
encoder's metadata), ``pretrain_num_input_channels``, ``recommended_downstream_patchsize`` (our plans'
3d_fullres patch: master's like-pretrained workflow uses it as the patch, so it must suit our strides),
and the key names read from the rebuilt network (``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj``,
``key_to_lpe`` None). Only plain types and tensors are written, so ``weights_only=True`` reads it.

Self-check before anything is written: the content is saved to memory and read back with
``weights_only=True``, the plan survives JSON, the network is rebuilt from the plan and the encoder and stem
weights are strict-loaded into it with 1 and 2 input channels (the first convolution adapted by our rule,
which for one source channel equals master's repeat / C), and every exported tensor equals its source.
After writing, the file on disk is read back and compared again. nnU-Net master fails on its own for a
PlainConvUNet export fine-tuned with more than one channel (ECOSYSTEM_WEIGHTS.md 3.4): we export it, and say so.
"""
from __future__ import annotations

import io
import json
import os

import torch

from nnunet_voco.artifacts import ENCODER_FILE
from nnunet_voco.checkpoint import adapt_input_channels, load_file
from nnunet_voco.nnunet import UserInputError
from nnunet_voco.storage.atomic_files import write_files_atomic
from nnunet_voco.weights.architecture import build_network, family_of, is_resencl, short_name
from nnunet_voco.weights.citations import NNUNET, VOCO, citation_lines
from nnunet_voco.weights.pretrain_init import read_encoder_file
from nnunet_voco.weights.source import NNSSL_PROJECTOR

FILES = ("checkpoint_final.pth", "adaptation_plan.json", "config.json", "README.md")
_DEFAULT_RESAMPLING = {"data": ("resample_data_or_seg_to_shape", {"is_seg": False, "order": 3, "order_z": 0,
                                                                   "force_separate_z": None}),
                       "mask": ("resample_data_or_seg_to_shape", {"is_seg": True, "order": 1, "order_z": 0,
                                                                   "force_separate_z": None})}


def _encoder_path(source: str) -> str:
    path = os.path.join(source, ENCODER_FILE) if os.path.isdir(source) else source
    if not os.path.isfile(path):
        raise UserInputError(f"{source} holds no {ENCODER_FILE}; pass a finished voco_pretrain run folder or the "
                             f"encoder file itself")
    return path


def _our_plans(meta: dict) -> dict | None:
    root, dataset, plans = os.environ.get("nnUNet_preprocessed"), meta.get("dataset_name"), meta.get("plans_name")
    path = os.path.join(root, dataset, plans + ".json") if root and dataset and plans else ""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _pretrain_plan(meta: dict, plans: dict | None) -> dict:
    imported = meta.get("imported") or {}
    config = ((plans or {}).get("configurations") or {}).get(meta.get("configuration") or "", {})
    spacing = [float(v) for v in (meta.get("spacing") or config.get("spacing") or [1.0, 1.0, 1.0])]
    data = (config.get("resampling_fn_data"), config.get("resampling_fn_data_kwargs"))
    mask = (config.get("resampling_fn_seg"), config.get("resampling_fn_seg_kwargs"))
    data, mask = (data if data[0] else _DEFAULT_RESAMPLING["data"]), (mask if mask[0] else _DEFAULT_RESAMPLING["mask"])
    norms = list(meta.get("normalization_schemes") or config.get("normalization_schemes") or ["ZScoreNormalization"])
    crop = meta.get("crop_size") or meta.get("patch_size") or imported.get("patch_size") or [64, 64, 64]
    return {
        "dataset_name": meta.get("dataset_name") or imported.get("pretrain_dataset") or "unknown",
        "plans_name": meta.get("plans_name") or imported.get("pretrain_plans") or "unknown",
        "original_median_spacing_after_transp": list((plans or {}).get("original_median_spacing_after_transp") or spacing),
        "image_reader_writer": (plans or {}).get("image_reader_writer") or "SimpleITKIO",
        "transpose_forward": list((plans or {}).get("transpose_forward") or [0, 1, 2]),
        "transpose_backward": list((plans or {}).get("transpose_backward") or [0, 1, 2]),
        "experiment_planner_used": "nnunet_voco",
        "configurations": {meta.get("configuration") or "3d_fullres": {
            "data_identifier": config.get("data_identifier") or "unknown", "preprocessor_name":
                config.get("preprocessor_name") or "DefaultPreprocessor", "spacing_style": "median",
            "normalization_schemes": norms,
            "use_mask_for_norm": list(config.get("use_mask_for_norm") or [False] * len(norms)),
            "resampling_fn_data": data[0], "resampling_fn_data_kwargs": dict(data[1] or {}),
            "resampling_fn_mask": mask[0], "resampling_fn_mask_kwargs": dict(mask[1] or {}),
            "spacing": spacing, "patch_size": [int(v) for v in crop]}},
    }


def adaptation_plan(meta: dict, plans: dict | None, network) -> dict:
    """nnssl's adaptation plan for our encoder (module docstring); ``network`` is the rebuilt downstream network."""
    arch = meta["architecture"]
    kwargs = arch["arch_kwargs"]
    if is_resencl(arch):
        architecture = {"arch_class_name": "ResEncL", "arch_kwargs": None, "arch_kwargs_requiring_import": None}
    else:
        architecture = {"arch_class_name": short_name(arch), "arch_kwargs": dict(kwargs),
                        "arch_kwargs_requiring_import": [k for k in ("conv_op", "norm_op", "dropout_op", "nonlin")
                                                         if kwargs.get(k) is not None]}
    recommended = meta.get("patch_size") or (meta.get("imported") or {}).get("recommended_downstream_patchsize")
    return {"architecture_plans": architecture, "pretrain_plan": _pretrain_plan(meta, plans),
            "pretrain_num_input_channels": int(meta["num_input_channels"]),
            "recommended_downstream_patchsize": [int(v) for v in (recommended or [160, 160, 160])],
            "key_to_encoder": network.key_to_encoder, "key_to_stem": network.key_to_stem,
            "keys_to_in_proj": list(network.keys_to_in_proj), "key_to_lpe": None,
            "architecture_kwargs": {"n_stages": int(kwargs["n_stages"]), "kernel_sizes": kwargs["kernel_sizes"]}}


def _projector(source: str, heads: dict) -> dict:
    """The projector as nnssl names it: imported heads, or our run's ``checkpoint_final.pth`` student projector."""
    head = dict(heads.get("projector") or {})
    final = os.path.join(source, "checkpoint_final.pth") if os.path.isdir(source) else ""
    if not head and os.path.isfile(final):
        model = load_file(final).get("model") or {}
        head = {k[len("projector."):]: v for k, v in model.items() if k.startswith("projector.")}
    back = {ours: theirs for theirs, ours in NNSSL_PROJECTOR.items()}
    out = {}
    for key, value in head.items():
        module, _, leaf = key.partition(".")
        if module in back:
            out[f"projector.{back[module]}.{leaf}"] = value
    return out


def _self_check(content: dict, state: dict, meta: dict) -> bytes:
    """The checks of the module docstring; returns the serialised checkpoint."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    data = buffer.getvalue()
    back = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    plan = json.loads(json.dumps(back["nnssl_adaptation_plan"]))
    weights = back["network_weights"]
    c_src = int(plan["pretrain_num_input_channels"])
    for channels in (1, 2):
        net = build_network(meta["architecture"], channels, device="meta")
        for prefix in (plan["key_to_encoder"], plan["key_to_stem"]):
            part = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
            for key in plan["keys_to_in_proj"]:
                rel = key[len(prefix) + 1:] + ".weight"
                if key.startswith(prefix + ".") and channels != c_src:
                    part[rel] = adapt_input_channels(part[rel], channels)
            net.get_submodule(prefix).load_state_dict(part, strict=True, assign=True)
    bad = [k for k, v in state.items() if not torch.equal(weights["encoder." + k], v)]
    if bad or len([k for k in weights if k.startswith("encoder.")]) != len(state):
        raise UserInputError(f"export self-check failed: {len(bad)} tensors differ from the source (first {bad[:1]})")
    return data


def export_nnssl(source: str, out_dir: str) -> list[str]:
    """Export ``source`` (a run folder or encoder file) into ``out_dir``; returns the report lines.

    Raises:
        UserInputError: a Swin encoder, not our format, or a failed self-check (nothing is written then).
    """
    path = _encoder_path(source)
    state, meta, heads = read_encoder_file(path)
    if meta.get("encoder_family") != "cnn":
        raise UserInputError(
            f"{path} holds a SwinUNETR encoder, which nnU-Net master cannot build from an nnssl plan (its "
            f"PretrainedTrainer knows ResEncL, Primus and dynamic-network-architectures classes only); fine-tune it "
            f"with nnUNetTrainerVoCoSwin instead")
    family_of(meta["architecture"])
    network = build_network(meta["architecture"], meta["num_input_channels"], device="meta")
    plan = adaptation_plan(meta, _our_plans(meta), network)
    projector = _projector(source, heads)
    imported = meta.get("imported") or {}
    trainer = f"nnunet_voco.VoCo_{meta.get('preset')}" if not imported else (imported.get("trainer_name") or "unknown")
    citations = meta.get("citations") or [VOCO, NNUNET]
    content = {"network_weights": {**{"encoder." + k: v for k, v in state.items()}, **projector},
               "nnssl_adaptation_plan": plan, "trainer_name": trainer, "init_args": {}, "citations": citations}
    data = _self_check(content, state, meta)
    files = [(os.path.join(out_dir, FILES[0]), "wb", lambda f: f.write(data)),
             (os.path.join(out_dir, FILES[1]), "w", lambda f: json.dump({**plan, "trainer_name": trainer}, f, indent=4)),
             (os.path.join(out_dir, FILES[2]), "w", lambda f: json.dump(
                 {"library": "nnunet-voco", "format": "nnssl checkpoint", "source": os.path.abspath(path)}, f, indent=2)),
             (os.path.join(out_dir, FILES[3]), "w", lambda f: f.write(_model_card(meta, plan, trainer, citations)))]
    write_files_atomic(files, "free space there or pass -o elsewhere")
    written = torch.load(os.path.join(out_dir, FILES[0]), map_location="cpu", weights_only=True)
    if any(not torch.equal(written["network_weights"]["encoder." + k], v) for k, v in state.items()):
        raise UserInputError(f"{out_dir}/{FILES[0]} differs from the source after writing; the disk is unreliable")
    return [f"exported {len(state)} encoder keys ({plan['architecture_plans']['arch_class_name']}, "
            f"{meta['num_input_channels']} input channel(s)){f', projector {len(projector)} tensors' if projector else ''} "
            f"to {out_dir}: {', '.join(FILES)}",
            f"self-check: read back with weights_only=True, plan JSON round trip, strict load into the rebuilt network "
            f"with 1 and 2 input channels, all {len(state)} tensors equal to the source",
            f"recommended downstream patch {plan['recommended_downstream_patchsize']} (our plans' 3d_fullres patch)"] + \
        (["note: nnU-Net master cannot fine-tune a PlainConvUNet export with more than one input channel (its loader "
          "skips the channel adaptation there); nnUNetTrainerVoCo can"] if "Plain" in short_name(meta["architecture"]) else [])


def _model_card(meta: dict, plan: dict, trainer: str, citations) -> str:
    config = next(iter(plan["pretrain_plan"]["configurations"].values()))
    return "\n".join([
        "# nnunet-voco encoder (nnssl layout)", "",
        f"- trainer: {trainer}; pre-trained on: {meta.get('pretrained_on') or ', '.join(meta.get('datasets') or [])}",
        f"- steps: {meta.get('steps')}; spacing {config['spacing']}; normalisation {config['normalization_schemes']}; "
        f"crop {config['patch_size']}; input channels {plan['pretrain_num_input_channels']}",
        f"- recommended downstream patch: {plan['recommended_downstream_patchsize']}",
        "- licence: state the licence of the data and of any weights this encoder started from", "",
        "## Cite", ""] + [f"- {line}" for line in citation_lines(citations)]) + "\n"
