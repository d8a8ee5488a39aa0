"""Writing files safely: atomic writes, disk-error translation (full, read-only or vanished disks) and
one-run-per-folder locks."""
