"""Citations carried with weights, in the list form nnU-Net master reads from nnssl checkpoints.

Each entry is ``{"type", "name", "apa_citations": [...]}`` (nnU-Net master's ``pretrainedTrainer``
prints this key; nnssl itself never writes it, ECOSYSTEM_WEIGHTS.md 1.1). The imported file records the
source's own list when it has one, else the entries below that match what the file is; the trainers
print them at the start of training.
"""
from __future__ import annotations

VOCO = {"type": "pre-training method", "name": "VoCo", "apa_citations": [
    "Wu, L., Zhuang, J., & Chen, H. (2024). VoCo: A Simple-yet-Effective Volume Contrastive Learning Framework "
    "for 3D Medical Image Analysis. In Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern "
    "Recognition (CVPR), 22873-22882. arXiv:2402.17300",
    "Wu, L., Zhuang, J., & Chen, H. Large-Scale 3D Medical Image Pre-training with Geometric Context Priors. "
    "IEEE Transactions on Pattern Analysis and Machine Intelligence. arXiv:2410.09890"]}
NNUNET = {"type": "framework", "name": "nnU-Net", "apa_citations": [
    "Isensee, F., Jaeger, P. F., Kohl, S. A. A., Petersen, J., & Maier-Hein, K. H. (2021). nnU-Net: a "
    "self-configuring method for deep learning-based biomedical image segmentation. Nature Methods, 18(2), 203-211"]}
OPENMIND = {"type": "pre-training data and checkpoints", "name": "OpenMind / nnssl", "apa_citations": [
    "Wald, T., Ulrich, C., Suprijadi, J., Ziegler, S., Nohel, M., Peretzke, R., ... & Maier-Hein, K. H. (2024). "
    "An OpenMind for 3D medical vision self-supervised learning. arXiv:2412.17041"]}


def default_citations(source_format: str, trainer_name: str | None) -> list[dict]:
    """The citations of a file that carries none: by its format and the trainer that wrote it."""
    out = []
    if "voco" in (trainer_name or "").lower() or source_format in ("VoCo Swin release", "VoComni_nnunet",
                                                                  "nnunet-voco encoder"):
        out.append(VOCO)
    if source_format.startswith("nnssl"):
        out.append(OPENMIND)
    out.append(NNUNET)
    return out


def citation_lines(citations) -> list[str]:
    """``name (type): citation`` lines for a log."""
    lines = []
    for entry in citations or []:
        if not isinstance(entry, dict):
            lines.append(str(entry))
            continue
        for text in list(entry.get("apa_citations") or []) + list(entry.get("bibtex_citations") or []):
            lines.append(f"{entry.get('name', '?')} ({entry.get('type', 'citation')}): {' '.join(str(text).split())}")
    return lines
