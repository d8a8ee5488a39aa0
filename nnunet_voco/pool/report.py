"""What one ``voco_preprocess_unlabeled`` run did, and the summary printed at its end."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class PoolReport:
    """What one :func:`~nnunet_voco.pool.create.create_unlabeled_pool` run did.

    Args:
        dataset_name: the pool's ``DatasetNNN_Name``.
        target_name: the TARGET's ``DatasetNNN_Name``.
        folder: the pool's preprocessed dataset folder.
        plans_name: plans identifier.
        configuration: configuration name.
        written: ids of the cases written in this run.
        already_present: ids of the cases that were complete before this run.
        skipped: ``{"file": ..., "reason": ...}`` per input that was not used.
        seconds: wall time of the preprocessing.
        warnings: notes for the user (e.g. a stale lock of a killed run was taken over).
    """

    dataset_name: str
    target_name: str
    folder: str
    plans_name: str
    configuration: str
    written: list[str] = dataclasses.field(default_factory=list)
    already_present: list[str] = dataclasses.field(default_factory=list)
    skipped: list[dict] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """Return the end-of-run text: counts, throughput, skipped files, output and next command."""
        rate = len(self.written) / max(self.seconds / 60.0, 1e-9)
        lines = [f"{len(self.written)} cases written, {len(self.skipped)} skipped, {len(self.already_present)} "
                 f"already present ({rate:.1f} cases/min over {self.seconds:.0f} s)"]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.skipped:
            lines.append("skipped:")
            lines += [f"  {s['file']}: {s['reason']}" for s in self.skipped]
        options = "".join(f" {flag} {value}" for flag, value, default in
                          (("-p", self.plans_name, "nnUNetPlans"), ("-c", self.configuration, "3d_fullres"))
                          if value != default)
        lines.append(f"output: {self.folder}")
        lines.append(f"next: voco_pretrain -d {int(self.dataset_name[7:10])} {int(self.target_name[7:10])}{options}")
        return "\n".join(lines)
