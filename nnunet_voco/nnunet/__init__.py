"""The one place that knows nnU-Net's folders, plans and dataset classes (this file only re-exports).

Everything is read through nnU-Net's own API (``maybe_convert_to_dataset_name``, ``PlansManager``,
``ConfigurationManager``, ``infer_dataset_class``), so blosc2 and numpy preprocessed data both work
and nnU-Net's path variables (lazy ``_EnvPath`` objects in 2.8) are honoured. One idea per module:

* :mod:`~nnunet_voco.nnunet.paths`: the folder variables (``nnUNet_preprocessed``, ``nnUNet_results``);
* :mod:`~nnunet_voco.nnunet.dataset_names`: ids and names (``17`` -> ``Dataset017_Liver``);
* :mod:`~nnunet_voco.nnunet.plans`: plans, configurations and the network they plan;
* :mod:`~nnunet_voco.nnunet.datasets`: opening preprocessed datasets for sampling;
* :mod:`~nnunet_voco.nnunet.preprocessing`: nnU-Net's preprocessing of raw images;
* :mod:`~nnunet_voco.nnunet.loader`: the streaming loader;
* :mod:`~nnunet_voco.nnunet.synthetic_datasets`: synthetic stand-in datasets for tests and benchmarks.

User errors raise :class:`~nnunet_voco.errors.UserInputError` (re-exported here), a ``ValueError``
whose message is one line naming the value and the fix; the commands turn it into exit code 2.
"""
from nnunet_voco.errors import UserInputError
from nnunet_voco.nnunet.dataset_names import (UnknownDataset, dataset_name, datasets_with_id, lookup_dataset_name,
                                              raw_dataset_exists)
from nnunet_voco.nnunet.datasets import DatasetSource, open_dataset, open_datasets
from nnunet_voco.nnunet.paths import preprocessed_root, results_root
from nnunet_voco.nnunet.plans import build_plans_network, configuration_manager, plans_configurations, read_plans

__all__ = ["UserInputError", "UnknownDataset", "dataset_name", "datasets_with_id", "lookup_dataset_name",
           "raw_dataset_exists", "DatasetSource", "open_dataset", "open_datasets", "preprocessed_root", "results_root",
           "build_plans_network", "configuration_manager", "plans_configurations", "read_plans"]
