"""Targets of an item: image-level labels and lesion masks (``dictionary``)."""
