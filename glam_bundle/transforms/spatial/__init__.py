"""Geometry of the preprocessing: array functions (``array``) and dictionary transforms (``dictionary``)."""
