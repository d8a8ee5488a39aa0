"""voco_import_weights on faithful synthetic checkpoints of every format (ECOSYSTEM_WEIGHTS.md 6.2), and its refusals.

Key and shape tests build the real ResEncL on the meta device (no memory, ~0.1 s); value tests use a small
ResEnc on CPU with every parameter randomised. No real published file is reachable here.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import torch

from nnunet_voco.commands.import_weights import main as import_main
from nnunet_voco.weights.architecture import ArchitectureError, describe
from nnunet_voco.weights.importer import import_weights, write_imported
from nnunet_voco.weights.reading import NUMPY_ALLOW_LIST, WeightsFileError
from synthetic_weights import (SMALL, nnssl_checkpoint, nnunet_checkpoint, nnunet_plans, plain, resenc,
                               write_hf_folder)

N_RESENCL = 224  # unique encoder tensors of nnssl's ResEncL (448 state-dict keys with aliases)


def _save(tmp_path, obj, name="ckpt.pth") -> str:
    path = str(tmp_path / name)
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("variant, fmt, skipped", [
    ("release", "nnssl", 0), ("training", "nnssl", 1), ("spark", "nnssl (no plan)", 1), ("numpy", "nnssl", 1),
    ("citations", "nnssl", 0), ("tensor_plan", "nnssl", 0), ("mae", "nnssl", 508)])
def test_nnssl_variants_import_every_encoder_tensor(tmp_path, variant, fmt, skipped):
    result = import_weights(_save(tmp_path, nnssl_checkpoint(variant)))
    meta, tally = result.meta, result.tally
    assert meta["imported"]["source_format"] == fmt
    assert describe(meta["architecture"]).startswith("ResEncL (nnssl): 6 stages, widths [32, 64, 128, 256, 320, 320]")
    assert meta["architecture"]["arch_kwargs"]["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert not meta["strides_inferred"]  # the ResEncL shape is recognised even without a plan (spark)
    assert tally.groups["encoder (stem + stages)"][0] == N_RESENCL and len(result.encoder) == 2 * N_RESENCL
    assert tally.count("skipped") == skipped
    assert tally.total == tally.count("imported") + tally.count("skipped") + tally.count("kept for voco_pretrain --init")
    if variant != "mae":  # VoCo layout: the projector is kept for --init
        assert meta["heads"] == {"projector": [1120, 2048, 2048, 2048]} and len(result.heads["projector"]) == 6
    assert meta["imported"]["sha256"] and meta["imported"]["trainer_name"]


def test_tally_counts_every_tensor_of_the_file(tmp_path):
    ckpt = nnssl_checkpoint("mae")
    result = import_weights(_save(tmp_path, ckpt))
    assert result.tally.total == len(ckpt["network_weights"]) == 956


def test_plan_facts_are_recorded_and_tensor_plan_values_become_lists(tmp_path):
    result = import_weights(_save(tmp_path, nnssl_checkpoint("tensor_plan")))
    imported = result.meta["imported"]
    assert imported["pretrain_dataset"] == "Dataset745_OpenNeuro_v2" and imported["spacing_style"] == "onemmiso"
    assert imported["spacing"] == [1.0, 1.0, 1.0] and imported["patch_size"] == [64, 64, 64]
    assert imported["normalization_schemes"] == ["ZScoreNormalization"] and imported["input_channels"] == 1
    assert result.meta["spacing"] == [1.0, 1.0, 1.0] and result.meta["num_input_channels"] == 1


def test_citations_of_the_file_win_else_the_defaults(tmp_path):
    own = import_weights(_save(tmp_path, nnssl_checkpoint("citations"), "a.pth")).meta["citations"]
    assert own == [{"type": "pre-training", "name": "Synthetic", "apa_citations": ["Doe, J. (2026). A test."]}]
    names = [c["name"] for c in import_weights(_save(tmp_path, nnssl_checkpoint("release"), "b.pth")).meta["citations"]]
    assert names == ["VoCo", "OpenMind / nnssl", "nnU-Net"]


def test_numpy_values_load_only_through_the_allow_list(tmp_path):
    path = _save(tmp_path, nnssl_checkpoint("numpy"))
    with pytest.raises(Exception, match="Unsupported global"):  # the fixture is faithful: plain weights_only fails
        torch.load(path, weights_only=True)
    result = import_weights(path)
    assert result.meta["imported"]["numpy_allow_list"] is True
    assert "read with the numpy allow-list" in result.lines()[0]
    names = {getattr(g, "__name__", str(g)) for g in NUMPY_ALLOW_LIST}
    assert {"scalar", "_reconstruct", "ndarray", "dtype"} <= names  # and nothing but numpy types
    assert all(getattr(g, "__module__", "").startswith("numpy") for g in NUMPY_ALLOW_LIST)


def test_a_pickled_object_outside_the_allow_list_is_refused_by_name(tmp_path):
    ckpt = nnssl_checkpoint("numpy")
    ckpt["init_args"]["output_folder"] = pathlib.PosixPath("/somewhere")
    with pytest.raises(WeightsFileError, match="pickled pathlib"):
        import_weights(_save(tmp_path, ckpt))


def test_hf_folder_with_embedded_plan_and_with_the_sidecar_only(tmp_path):
    a = import_weights(write_hf_folder(str(tmp_path / "a"), nnssl_checkpoint("release")))
    b = import_weights(write_hf_folder(str(tmp_path / "b"), nnssl_checkpoint("release"), embed_plan=False))
    assert a.meta["imported"]["source_format"] == "nnssl"
    assert b.meta["imported"]["source_format"] == "nnssl (plan from adaptation_plan.json)"
    assert b.meta["imported"]["trainer_name"] == "VoCoTrainer" and b.meta["architecture"] == a.meta["architecture"]


def test_nnunet_checkpoint_takes_the_architecture_from_its_plans(tmp_path):
    net = resenc(SMALL, num_classes=2)
    ckpt = nnunet_checkpoint(net, nnunet_plans(SMALL, spacing=(2.5, 0.8, 0.8)), "3d_cascade_fullres")  # inherits
    result = import_weights(_save(tmp_path, ckpt))
    imported = result.meta["imported"]
    assert imported["source_format"] == "nnU-Net checkpoint" and imported["numpy_allow_list"] is True
    assert imported["architecture_source"].startswith("nnU-Net plans") and imported["trainer_name"] == "nnUNetTrainer"
    assert result.meta["spacing"] == [2.5, 0.8, 0.8] and result.meta["normalization_schemes"] == ["CTNormalization"]
    assert result.tally.groups["encoder (stem + stages)"][0] == 50 and result.tally.count("skipped") == 124


@pytest.mark.parametrize("wrap", ["plain", "module", "orig_mod", "encoder_only", "state_dict"])
def test_bare_state_dicts_with_any_wrapper(tmp_path, wrap):
    sd = resenc(SMALL).state_dict()
    obj = {"plain": sd, "module": {"module." + k: v for k, v in sd.items()},
           "orig_mod": {"_orig_mod." + k: v for k, v in sd.items()},
           "encoder_only": {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")},
           "state_dict": {"state_dict": {"module." + k: v for k, v in sd.items()}}}[wrap]
    result = import_weights(_save(tmp_path, obj))
    assert result.meta["imported"]["source_format"] == "dynamic-network-architectures state dict"
    assert result.meta["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32]
    assert result.meta["architecture"]["arch_kwargs"]["n_blocks_per_stage"] == [1, 2, 2]
    assert result.meta["strides_inferred"] and result.tally.groups["encoder (stem + stages)"][0] == 50


def test_vocomni_nnunet_is_a_supervised_plain_unet(tmp_path):
    sd = plain().state_dict()
    result = import_weights(_save(tmp_path, {"state_dict": {"module.backbone." + k: v for k, v in sd.items()}}))
    meta = result.meta
    assert meta["imported"]["source_format"] == "VoComni_nnunet" and meta["imported"]["supervised"]
    assert meta["architecture"]["network_class_name"].endswith("PlainConvUNet")
    assert meta["architecture"]["arch_kwargs"]["n_conv_per_stage"] == [2] * 6
    assert meta["keys_to_in_proj"] == ["stages.0.0.convs.0.conv", "stages.0.0.convs.0.all_modules.0"]


def test_values_survive_import_and_write_exactly(tmp_path):
    net = resenc(SMALL, device="cpu", seed=3)
    src = _save(tmp_path, nnssl_checkpoint("release", device="cpu", kwargs=SMALL, seed=3))
    out = str(tmp_path / "out.pth")
    assert import_main([src, "-o", out]) == 0
    written = torch.load(out, weights_only=True)
    expected = nnssl_checkpoint("release", device="cpu", kwargs=SMALL, seed=3)["network_weights"]
    assert set(written["encoder"]) == {k[len("encoder."):] for k in expected if k.startswith("encoder.")}
    for k, v in written["encoder"].items():
        assert torch.equal(v, expected["encoder." + k]), k
    assert torch.equal(written["heads"]["projector"]["3.weight"], expected["projector.layer2.0.weight"])
    assert os.path.isfile(tmp_path / "out.json")
    del net


def test_in_channels_adapts_every_alias_of_the_first_conv(tmp_path):
    src = _save(tmp_path, nnssl_checkpoint("release", device="cpu", kwargs=SMALL))
    result = import_weights(src, in_channels=2)
    stem, alias = result.encoder["stem.convs.0.conv.weight"], result.encoder["stem.convs.0.all_modules.0.weight"]
    source = nnssl_checkpoint("release", device="cpu", kwargs=SMALL)["network_weights"]["encoder.stem.convs.0.conv.weight"]
    assert stem.shape[1] == 2 and torch.equal(stem, alias)
    torch.testing.assert_close(stem[:, :1] + stem[:, 1:], source)  # sum over the new channels = the original
    assert result.meta["num_input_channels"] == 2 and result.meta["source_in_channels"] == 1


def test_own_encoder_file_passes_through(tmp_path):
    first = import_weights(_save(tmp_path, nnssl_checkpoint("release", device="cpu", kwargs=SMALL)))
    out = str(tmp_path / "imported.pth")
    write_imported(first, out, str(tmp_path / "ckpt.pth"))
    again = import_weights(out)
    assert again.meta["imported"]["source_format"] == "nnssl"  # the original record is kept
    assert all(torch.equal(again.encoder[k], v) for k, v in first.encoder.items())


# ---- refusals: one line, exit 2, nothing written ----------------------------------------------------------------

def _refused(tmp_path, capsys, argv) -> str:
    out = tmp_path / "out.pth"
    assert import_main(argv + ["-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("voco_import_weights: error:") and "\n" not in err, err
    assert not out.exists() and not (tmp_path / "out.json").exists()
    return err


def test_refuses_primus(tmp_path, capsys):
    err = _refused(tmp_path, capsys, [_save(tmp_path, nnssl_checkpoint("primus"))])
    assert "Primus (vision transformer)" in err and "ResEncL sibling" in err


def test_refuses_a_2d_nnunet_checkpoint(tmp_path, capsys):
    ckpt = nnunet_checkpoint(resenc(SMALL), nnunet_plans(SMALL, two_d=True), "2d")
    assert "2-D configuration '2d'" in _refused(tmp_path, capsys, [_save(tmp_path, ckpt)])


def test_refuses_2d_weights_read_from_shapes(tmp_path, capsys):
    state = {"encoder.stages.0.0.convs.0.conv.weight": torch.zeros(8, 1, 3, 3),
             "encoder.stages.0.0.convs.0.conv.bias": torch.zeros(8)}
    assert "the encoder is 2-D" in _refused(tmp_path, capsys, [_save(tmp_path, state)])


def test_refuses_a_checkpoint_without_encoder_tensors(tmp_path, capsys):
    ckpt = nnssl_checkpoint("release")
    ckpt["network_weights"] = {k: v for k, v in ckpt["network_weights"].items() if k.startswith("projector.")}
    assert "holds no encoder tensors" in _refused(tmp_path, capsys, [_save(tmp_path, ckpt)])


def test_refuses_a_file_of_another_kind(tmp_path, capsys):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    assert "not a readable torch checkpoint" in _refused(tmp_path, capsys, [str(path)])


def test_refuses_a_truncated_file(tmp_path, capsys):
    path = _save(tmp_path, nnssl_checkpoint("release", device="cpu", kwargs=SMALL), "full.pth")
    data = open(path, "rb").read()
    with open(tmp_path / "cut.pth", "wb") as f:
        f.write(data[: len(data) // 2])
    err = _refused(tmp_path, capsys, [str(tmp_path / "cut.pth")])
    assert "truncated or of another kind" in err


def test_refuses_fewer_target_channels_than_the_rule_serves(tmp_path, capsys):
    src = _save(tmp_path, nnssl_checkpoint("release", kwargs=SMALL))
    with pytest.raises(SystemExit) as stop:  # a usage error, before the file is read
        import_main([src, "--in_channels", "0", "-o", str(tmp_path / "out.pth")])
    assert stop.value.code == 2 and capsys.readouterr().err.strip().endswith(
        "voco_import_weights: error: --in_channels must be at least 1, got 0")
    assert not (tmp_path / "out.pth").exists()
    with pytest.raises(ValueError, match="needs at least 1 target channel"):  # the library's own check stays
        import_weights(src, 0)


def test_refuses_a_declared_architecture_the_tensors_do_not_build(tmp_path, capsys):
    ckpt = nnssl_checkpoint("release", kwargs=SMALL)
    ckpt["nnssl_adaptation_plan"]["architecture_plans"]["arch_kwargs"]["features_per_stage"] = [8, 24, 32]
    assert "do not build the declared architecture" in _refused(tmp_path, capsys, [_save(tmp_path, ckpt)])


def test_folder_with_several_candidates_is_refused(tmp_path, capsys):
    for name in ("a.pth", "b.pth"):
        _save(tmp_path, {"x": torch.zeros(1)}, name)
    assert "several (a.pth, b.pth)" in _refused(tmp_path, capsys, [str(tmp_path)])


def test_inspect_writes_nothing_and_names_format_and_facts(tmp_path, capsys):
    src = _save(tmp_path, nnssl_checkpoint("release"))
    assert import_main([src, "--inspect"]) == 0
    out = capsys.readouterr().out
    assert "format: nnssl" in out and "ResEncL (nnssl): 6 stages" in out and "Dataset745_OpenNeuro_v2" in out
    assert "projector: 1120 -> 2048 -> 2048 -> 2048" in out and "cite: VoCo" in out
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth"]


def test_numpy_arrays_in_a_plan_become_lists(tmp_path):
    ckpt = nnssl_checkpoint("release")
    ckpt["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["onemmiso"]["spacing"] = np.array([1.0, 1.0, 1.0])
    result = import_weights(_save(tmp_path, ckpt))
    assert result.meta["spacing"] == [1.0, 1.0, 1.0] and result.meta["imported"]["numpy_allow_list"]


def test_unsupported_block_type_is_refused_with_the_reason():
    from nnunet_voco.weights.architecture import infer_architecture

    state = {"stages.0.blocks.0.conv1.conv.weight": torch.zeros(8, 1, 3, 3, 3),
             "stages.0.blocks.0.conv3.conv.weight": torch.zeros(8, 8, 1, 1, 1)}
    with pytest.raises(ArchitectureError, match="bottleneck"):
        infer_architecture(state)


def test_a_voco_pretrain_training_state_points_at_its_encoder(tmp_path, capsys):
    from nnunet_voco.checkpoint import SCHEMA_VERSION, STATE_FORMAT

    state = {"format": STATE_FORMAT, "schema_version": SCHEMA_VERSION, "model": resenc(SMALL).state_dict()}
    assert "import the voco_encoder.pth beside it" in _refused(tmp_path, capsys, [_save(tmp_path, state)])
