"""Breast foreground masks: array functions (``array``) and the dictionary transform (``dictionary``)."""
