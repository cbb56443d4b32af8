"""Training: multi-label segmentation from partial labels (see :mod:`.losses`)."""
