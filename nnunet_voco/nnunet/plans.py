"""nnU-Net plans: read with nnU-Net's ``PlansManager`` / ``ConfigurationManager``, and the network they plan."""
from __future__ import annotations


def read_plans(plans: str | dict):
    """nnU-Net's ``PlansManager`` for a plans file or dict (the dict stays reachable as ``.plans``)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans)


def plans_configurations(plans_manager) -> list[str]:
    """The configuration names of the plans, sorted; empty for a file that declares none."""
    return sorted(plans_manager.plans.get("configurations", {}))


def configuration_manager(plans: str | dict, configuration: str):
    """nnU-Net's ``ConfigurationManager`` (``inherits_from`` resolved) for ``configuration`` of ``plans``."""
    return read_plans(plans).get_configuration(configuration)


def build_plans_network(plans_manager, configuration_manager, num_input_channels: int, num_classes: int = 2):
    """The full segmentation network nnU-Net would build for these plans (deep supervision off)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager, num_input_channels, num_classes, False
    )
