"""The adaptation rules (kernels, stages, channels, refusals), plans like the weights, the nnssl export round trip,
``voco_pretrain --init`` and the trainers' warm-up, on small randomised networks (CPU) and meta-device ResEncL."""
from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace

import pytest
import torch

from nnunet_voco.weights.adaptation import AdaptationError, apply_transfer, plan_transfer
from nnunet_voco.weights.architecture import build_encoder, make_architecture, RESENC
from nnunet_voco.weights.encoder_state import to_unique
from nnunet_voco.weights.importer import import_weights, write_imported
from synthetic_weights import SMALL, dotted, nnssl_checkpoint, resenc

IN_PROJ = ["stem.convs.0.conv", "stem.convs.0.all_modules.0"]


def _arch(kwargs, **changes):
    k = {**copy.deepcopy(kwargs), **changes}
    return make_architecture(RESENC, k["n_stages"], k["features_per_stage"], k["kernel_sizes"], k["strides"],
                             k["n_blocks_per_stage"])


def _source(seed=0):
    enc = resenc(SMALL, device="cpu", seed=seed).encoder
    return to_unique(enc.state_dict(), enc, "test"), enc


def _target(in_channels=1, seed=9, **changes):
    enc = build_encoder(_arch(SMALL, **changes), in_channels, device="cpu")
    for p in enc.parameters():  # a recognisable "random" initialisation
        torch.nn.init.constant_(p, -7.0)
    return enc


def test_identical_topology_loads_one_to_one():
    source, _ = _source()
    target = _target()
    plan = plan_transfer(source, target, IN_PROJ)
    assert plan.one_to_one and plan.loaded == plan.expected == 50 and not plan.lines()
    apply_transfer(plan, source, target)
    for k, v in target.state_dict().items():  # aliases included
        name = k.replace("all_modules.0", "conv").replace("all_modules.1", "norm")
        assert torch.equal(v, source[name]), k


def test_anisotropic_target_averages_kernels_and_keeps_the_extra_stage_random():
    """Stem and stage 0 are [1,3,3] in the target (nnU-Net's plan for 2.5 x 0.8 x 0.8 mm) and it has a 4th stage."""
    source, _ = _source()
    target = _target(n_stages=4, features_per_stage=[8, 16, 32, 32],
                     kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                     strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], n_blocks_per_stage=[1, 2, 2, 2])
    plan = plan_transfer(source, target, IN_PROJ)
    assert plan.loaded == 50 and plan.expected == 50 + 16 and plan.random == {3: 16} and not plan.dropped
    averaged = {k for k in plan.kernel_axes}
    assert averaged == {"stem.convs.0.conv.weight", "stages.0.blocks.0.conv1.conv.weight",
                        "stages.0.blocks.0.conv2.conv.weight"}
    apply_transfer(plan, source, target)
    state = target.state_dict()
    for k in averaged:
        torch.testing.assert_close(state[k], source[k].mean(dim=2, keepdim=True))
    assert torch.equal(state["stages.1.blocks.1.conv2.conv.weight"], source["stages.1.blocks.1.conv2.conv.weight"])
    assert all((v == -7.0).all() for k, v in state.items() if k.startswith("stages.3."))
    lines = "\n".join(plan.lines())
    assert "averaged over spatial axis 0" in lines and "stage 3: 16 tensors keep their random initialisation" in lines


def test_surplus_source_stages_are_dropped_and_counted():
    source, _ = _source()
    target = _target(n_stages=2, features_per_stage=[8, 16], kernel_sizes=[[3, 3, 3]] * 2,
                     strides=[[1, 1, 1], [2, 2, 2]], n_blocks_per_stage=[1, 2])
    plan = plan_transfer(source, target, IN_PROJ)
    assert plan.loaded == plan.expected and plan.dropped == {2: len([k for k in source if k.startswith("stages.2.")])}
    assert plan.loaded + sum(plan.dropped.values()) == plan.source_total


@pytest.mark.parametrize("change, message", [
    (dict(features_per_stage=[8, 24, 32]), "stage 1 is 16 channels wide in the weights but 24 in the target"),
    (dict(n_blocks_per_stage=[1, 3, 2]), "stage 1 has 2 blocks (n_blocks_per_stage) in the weights but 3"),
    (dict(kernel_sizes=[[3, 3, 3], [3, 3, 5], [3, 3, 3]]), "cannot become (3, 3, 5)"),
])
def test_width_block_and_kernel_mismatches_are_refused_with_the_reason(change, message):
    source, _ = _source()
    with pytest.raises(AdaptationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_transfer(source, _target(**change), IN_PROJ)


def test_kernel_one_to_three_is_refused():
    enc = build_encoder(_arch(SMALL, kernel_sizes=[[1, 3, 3]] + [[3, 3, 3]] * 2), 1, "cpu")
    source = to_unique(enc.state_dict(), enc, "x")
    with pytest.raises(AdaptationError, match=r"kernel \(1, 3, 3\) in the weights cannot become \(3, 3, 3\)"):
        plan_transfer(source, _target(), IN_PROJ)


def test_residual_weights_into_a_plain_encoder_are_refused():
    from synthetic_weights import plain

    source, _ = _source()
    target = plain(3, (8, 16, 32), device="meta").encoder
    with pytest.raises(AdaptationError, match="ResidualEncoderUNet .* but the target is a PlainConvUNet"):
        plan_transfer(source, target, IN_PROJ)


@pytest.mark.parametrize("c_src, c_tgt", [(1, 2), (2, 1), (1, 4), (3, 2)])
def test_channels_follow_the_project_rule_on_every_alias(c_src, c_tgt):
    enc = randomised = resenc(SMALL, in_channels=c_src, device="cpu", seed=4).encoder
    source = to_unique(randomised.state_dict(), enc, "x")
    target = _target(in_channels=c_tgt)
    plan = plan_transfer(source, target, IN_PROJ)
    assert plan.identical_topology and plan.channels == {"stem.convs.0.conv.weight": (c_src, c_tgt)}
    apply_transfer(plan, source, target)
    w, alias = target.state_dict()["stem.convs.0.conv.weight"], target.state_dict()["stem.convs.0.all_modules.0.weight"]
    expected = source["stem.convs.0.conv.weight"].sum(dim=1, keepdim=True) / c_tgt
    assert torch.equal(w, alias) and w.shape[1] == c_tgt
    for c in range(c_tgt):
        torch.testing.assert_close(w[:, c:c + 1], expected)


# ---- plans like the weights (pure part; the command runs in the slow chain) ----------------------------------------

def _target_plans(tmp_path, spacing=(2.5, 1.0, 1.0), median=(24, 56, 56)):
    from nnunet_voco.weights.target_plans import TargetPlans

    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet", "arch_kwargs": {
        "n_stages": 4, "features_per_stage": [32, 64, 128, 256], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2] * 4,
        "n_conv_per_stage_decoder": [2] * 3, "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2, "patch_size": list(median),
              "median_image_size_in_voxels": list(median), "spacing": list(spacing),
              "normalization_schemes": ["CTNormalization"], "architecture": arch}
    plans = {"dataset_name": "Dataset990_Toy", "plans_name": "nnUNetPlans", "experiment_planner_used": "ExperimentPlanner",
             "configurations": {"2d": {"patch_size": [56, 56]}, "3d_fullres": config,
                                "3d_lowres": dict(config), "3d_cascade_fullres": {"inherits_from": "3d_fullres"}}}
    return TargetPlans("Dataset990_Toy", "nnUNetPlans", str(tmp_path / "nnUNetPlans.json"), plans, "3d_fullres",
                       dict(config), {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}})


BUDGET = SimpleNamespace(planner="ExperimentPlanner", vram_gb=8.0, reference=560e6, reference_batch=2, min_batch=2,
                         max_dataset_covered=0.05, num_training=6)
BUDGET.fits = lambda estimate: estimate / 2 * 2 <= 560e6
BUDGET.batch_size = lambda estimate, patch, median: 2


def _small_meta():
    return {"architecture": _arch(SMALL), "num_input_channels": 1, "spacing": [1.0, 1.0, 1.0],
            "keys_to_in_proj": IN_PROJ, "imported": {"sha256": "ab"}}


def test_plans_like_the_weights_keep_spacing_and_normalisation(tmp_path):
    from nnunet_voco.weights.plan_like import plans_like

    target = _target_plans(tmp_path)
    result = plans_like(_small_meta(), "/w.pth", target, "nnUNetPlans_like_w", BUDGET)
    config = result.plans["configurations"]["3d_fullres"]
    kwargs = config["architecture"]["arch_kwargs"]
    assert config["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    assert {k: kwargs[k] for k in ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage")} \
        == {k: SMALL[k] for k in ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage")}
    assert config["spacing"] == [2.5, 1.0, 1.0] and config["normalization_schemes"] == ["CTNormalization"]
    assert all(p % 4 == 0 for p in config["patch_size"]) and config["patch_size"] == [24, 56, 56]
    assert config["data_identifier"] == "nnUNetPlans_like_w_3d_fullres"
    assert set(result.plans["configurations"]) == {"2d", "3d_fullres"} and result.plans["plans_name"] == "nnUNetPlans_like_w"
    assert target.plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"].endswith("PlainConvUNet")


def test_plans_like_with_the_pretraining_spacing_rescale_the_median(tmp_path):
    from nnunet_voco.weights.plan_like import plans_like

    result = plans_like(_small_meta(), "/w.pth", _target_plans(tmp_path), "x", BUDGET, spacing_source="pretraining")
    config = result.plans["configurations"]["3d_fullres"]
    assert config["spacing"] == [1.0, 1.0, 1.0] and config["median_image_size_in_voxels"] == [60.0, 56.0, 56.0]


def test_plans_like_with_the_dataset_topology_keep_nnunet_kernels_and_stages(tmp_path):
    from nnunet_voco.weights.plan_like import plans_like

    target = _target_plans(tmp_path)
    kwargs = plans_like(_small_meta(), "/w.pth", target, "x", BUDGET, topology="dataset").plans[
        "configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert kwargs["kernel_sizes"] == target.arch["arch_kwargs"]["kernel_sizes"] and kwargs["n_stages"] == 4
    assert kwargs["features_per_stage"] == [8, 16, 32, 32] and kwargs["n_blocks_per_stage"] == [1, 2, 2, 2]


def test_patch_search_shrinks_to_the_memory_target():
    from nnunet_voco.weights.architecture import build_network, resencl_architecture
    from nnunet_voco.weights.plan_like import like_architecture, search_patch

    arch = like_architecture({"architecture": resencl_architecture()}, None, "weights")
    patch, batch, estimate = search_patch(arch, [1.0, 1.0, 1.0], [180, 220, 180], 1, 2, BUDGET)
    assert all(p % 32 == 0 for p in patch) and estimate <= 560e6
    net = build_network({"network_class_name": arch["network_class_name"], "arch_kwargs": arch["arch_kwargs"],
                         "arch_kwargs_requires_import": arch["_kw_requires_import"]}, 1, 2)
    bigger = list(patch)
    bigger[max(range(3), key=lambda a: patch[a] / [180, 220, 180][a])] += 32
    assert not BUDGET.fits(float(net.compute_conv_feature_map_size(bigger)))  # one stride more would not fit


# ---- export round trip ---------------------------------------------------------------------------------------------

def _own_encoder(tmp_path, kwargs=SMALL, channels=1):
    """An encoder file as voco_pretrain writes it (meta from the plans), randomised."""
    from nnunet_voco.artifacts import write_encoder

    enc = resenc(kwargs, in_channels=channels, device="cpu", seed=5).encoder
    meta = {"encoder_family": "cnn", "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        "arch_kwargs": dotted(kwargs), "arch_kwargs_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "key_to_encoder": "encoder", "encoder_key_prefixes": [""], "keys_to_in_proj": IN_PROJ,
        "plans_name": "nnUNetResEncUNetMPlans", "configuration": "3d_fullres", "dataset_name": "Dataset990_Toy",
        "datasets": ["Dataset990_Toy"], "patch_size": [24, 56, 56], "crop_size": [8, 16, 16], "spacing": [2.5, 1.0, 1.0],
        "num_input_channels": channels, "normalization_schemes": ["CTNormalization"] * channels, "preset": "v2",
        "steps": 4}
    path = str(tmp_path / "run" / "voco_encoder.pth")
    write_encoder(path, enc.state_dict(), meta)
    return path, enc.state_dict()


@pytest.mark.parametrize("channels", [1, 2])
def test_export_round_trip_gives_the_same_tensors(tmp_path, channels):
    from nnunet_voco.commands.export_weights import main as export_main

    path, state = _own_encoder(tmp_path, channels=channels)
    out = tmp_path / "export"
    assert export_main([os.path.dirname(path), "-o", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["README.md", "adaptation_plan.json", "checkpoint_final.pth", "config.json"]
    ckpt = torch.load(out / "checkpoint_final.pth", weights_only=True)
    assert set(ckpt) == {"network_weights", "nnssl_adaptation_plan", "trainer_name", "init_args", "citations"}
    plan = ckpt["nnssl_adaptation_plan"]
    assert plan["key_to_encoder"] == "encoder.stages" and plan["key_to_stem"] == "encoder.stem"
    assert plan["key_to_lpe"] is None and plan["recommended_downstream_patchsize"] == [24, 56, 56]
    assert plan["architecture_plans"]["arch_class_name"] == "ResidualEncoderUNet"
    assert len(plan["pretrain_plan"]) == 8 and len(next(iter(plan["pretrain_plan"]["configurations"].values()))) == 11
    assert json.load(open(out / "adaptation_plan.json"))["trainer_name"] == "nnunet_voco.VoCo_v2"
    back = import_weights(str(out))
    assert back.meta["imported"]["source_format"] == "nnssl" and back.meta["num_input_channels"] == channels
    assert set(back.encoder) == set(state) and all(torch.equal(back.encoder[k], v) for k, v in state.items())


def test_export_plan_of_resencl_uses_the_preset_name_and_maps_the_projector_back(tmp_path):
    from nnunet_voco.weights.architecture import build_network
    from nnunet_voco.weights.nnssl_export import _projector, adaptation_plan

    src = str(tmp_path / "c.pth")
    torch.save(nnssl_checkpoint("release"), src)  # meta device: names and shapes only
    result = import_weights(src)
    plan = adaptation_plan(result.meta, None, build_network(result.meta["architecture"], 1))
    assert plan["architecture_plans"] == {"arch_class_name": "ResEncL", "arch_kwargs": None,
                                          "arch_kwargs_requiring_import": None}
    assert plan["keys_to_in_proj"] == ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"]
    assert plan["pretrain_plan"]["dataset_name"] == "Dataset745_OpenNeuro_v2"
    assert sorted(_projector(src, result.heads)) == sorted(
        k for k in nnssl_checkpoint("release")["network_weights"] if k.startswith("projector."))


def test_swin_export_is_refused_with_the_reason(tmp_path, capsys):
    from nnunet_voco.artifacts import write_encoder
    from nnunet_voco.commands.export_weights import main as export_main

    write_encoder(str(tmp_path / "voco_encoder.pth"), {"w": torch.zeros(1)}, {"encoder_family": "swin"})
    assert export_main([str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "SwinUNETR encoder, which nnU-Net master cannot build" in err and not (tmp_path / "out").exists()


# ---- voco_pretrain --init ------------------------------------------------------------------------------------------

def _model(kwargs=SMALL, head_dim=64, in_channels=1):
    from nnunet_voco.encoders.bundle import EncoderBundle
    from nnunet_voco.voco.loss import VoCoLoss
    from nnunet_voco.voco.model import VoCoModel

    enc = build_encoder(_arch(kwargs), in_channels, "cpu")
    enc.return_skips = True
    bundle = EncoderBundle(enc, list(kwargs["features_per_stage"]), (4, 4, 4), {"encoder_family": "cnn"}, enc.state_dict)
    return VoCoModel(bundle, "v1", VoCoLoss("v1"), head_dim), bundle


def _source_dataset(tmp_path):
    return SimpleNamespace(name="Dataset990_Toy", data_folder=str(tmp_path / "pre" / "data"),
                           configuration_manager=SimpleNamespace(spacing=[2.5, 1.0, 1.0],
                                                                 normalization_schemes=["CTNormalization"]))


def _imported(tmp_path, **kw):
    src = str(tmp_path / "nnssl.pth")
    torch.save(nnssl_checkpoint("release", device="cpu", kwargs=SMALL, seed=11), src)
    out = str(tmp_path / "imported.pth")
    write_imported(import_weights(src, **kw), out, src)
    return out


def test_init_loads_encoder_and_projector_and_resets_the_teachers(tmp_path):
    from nnunet_voco.weights.pretrain_init import initialise_from

    path = _imported(tmp_path)
    model, bundle = _model(head_dim=64)
    lines = initialise_from(model, bundle, path, _source_dataset(tmp_path), "P", "3d_fullres")
    ckpt = nnssl_checkpoint("release", device="cpu", kwargs=SMALL, seed=11)["network_weights"]
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, ckpt["encoder." + k]), k
    assert torch.equal(model.projector.state_dict()["6.weight"], ckpt["projector.layer3.0.weight"])
    assert all(torch.equal(model.teacher_encoder.state_dict()[k], v) for k, v in model.encoder.state_dict().items())
    assert all(torch.equal(model.teacher_projector.state_dict()[k], v) for k, v in model.projector.state_dict().items())
    assert "loaded 50/50 encoder tensors" in lines[0] and lines[1] == "VoCo: --init: projector loaded (6 tensors)"
    assert any("ZScoreNormalization" in line for line in lines)  # MRI-pretrained weights on a CT pool: said
    assert bundle.meta["initialised_from"]["source_format"] == "nnssl" and bundle.meta["citations"]


def test_init_with_another_projector_width_starts_it_fresh(tmp_path):
    from nnunet_voco.weights.pretrain_init import initialise_from

    model, bundle = _model(head_dim=32)
    lines = initialise_from(model, bundle, _imported(tmp_path), _source_dataset(tmp_path), "P", "3d_fullres")
    assert lines[1].startswith("VoCo: --init: projector starts fresh: the file's is 56 -> 64 -> 64 -> 64, this run's "
                               "56 -> 32 -> 32 -> 32")


@pytest.mark.parametrize("change, reason", [
    ({"kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]]}, "kernels averaged over spatial axis 0"),
    ({"features_per_stage": [8, 16, 48]}, "stage 2 is 32 channels wide in the weights but 48 in the target")])
def test_init_with_plans_of_another_topology_or_width_names_voco_plan_like(tmp_path, change, reason):
    from nnunet_voco.nnunet import UserInputError
    from nnunet_voco.weights.pretrain_init import initialise_from

    model, bundle = _model(kwargs={**SMALL, **change})
    path = _imported(tmp_path)
    with pytest.raises(UserInputError, match=rf"{reason}.*run `voco_plan_like {path} -d 990 -p P`"):
        initialise_from(model, bundle, path, _source_dataset(tmp_path), "P", "3d_fullres")


def test_init_refuses_a_file_that_is_not_ours(tmp_path):
    from nnunet_voco.nnunet import UserInputError
    from nnunet_voco.weights.pretrain_init import initialise_from

    src = str(tmp_path / "raw.pth")
    torch.save(nnssl_checkpoint("release", kwargs=SMALL), src)
    model, bundle = _model()
    with pytest.raises(UserInputError, match="convert it first: `voco_import_weights"):
        initialise_from(model, bundle, src, _source_dataset(tmp_path), "P", "3d_fullres")


def test_init_of_a_swin_encoder_and_a_feature_size_mismatch(tmp_path):
    from nnunet_voco.artifacts import write_encoder
    from nnunet_voco.encoders.swin import build_swin_encoder
    from nnunet_voco.nnunet import UserInputError
    from nnunet_voco.voco.loss import VoCoLoss
    from nnunet_voco.voco.model import VoCoModel
    from nnunet_voco.weights.pretrain_init import initialise_from

    torch.manual_seed(3)
    source = build_swin_encoder(1, 12)
    write_encoder(str(tmp_path / "swin.pth"), source.state_fn(), source.meta)
    bundle = build_swin_encoder(1, 12)
    model = VoCoModel(bundle, "v2", VoCoLoss("v2"))
    lines = initialise_from(model, bundle, str(tmp_path / "swin.pth"), _source_dataset(tmp_path), "P", "3d_fullres")
    assert all(torch.equal(v, source.state_fn()[k]) for k, v in bundle.state_fn().items())
    assert "--init: loaded" in lines[0] and "no projector" in lines[1]
    other = build_swin_encoder(1, 24)
    with pytest.raises(UserInputError, match="--swin_feature_size the weights were made with"):
        initialise_from(VoCoModel(other, "v2", VoCoLoss("v2")), other, str(tmp_path / "swin.pth"),
                        _source_dataset(tmp_path), "P", "3d_fullres")


def test_init_is_not_part_of_the_resume_identity():
    from nnunet_voco.pretrain.config import IDENTITY_FIELDS, SCHEDULE_FIELDS, PretrainConfig

    assert "init" not in IDENTITY_FIELDS and "init" not in SCHEDULE_FIELDS
    assert PretrainConfig(datasets=("1",), init="x.pth").identity() == PretrainConfig(datasets=("1",)).identity()


# ---- trainers: the warm-up is declared once --------------------------------------------------------------------------

def test_the_warm_up_is_two_percent_of_each_budget():
    import nnunet_voco.trainers as trainers
    from nnunet_voco.trainers.training_budget import TrainingBudget
    from nnunet_voco.trainers.voco_trainers import nnUNetTrainerVoCo

    assert [TrainingBudget().warmup_epochs(n) for n in (1000, 500, 250, 100, 4, 2, 1)] == [20, 10, 5, 2, 1, 1, 1]
    classes = [getattr(trainers, n) for n in trainers.__all__]
    assert all("voco_warmup_epochs" not in vars(c) for c in classes if c is not nnUNetTrainerVoCo)
    assert isinstance(vars(nnUNetTrainerVoCo)["voco_warmup_epochs"], property)
