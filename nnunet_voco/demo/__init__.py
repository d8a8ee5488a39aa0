"""``voco_demo``: a synthetic phantom, the demo's stages and workflow, and its report and figure."""
