"""Transforms of the network output (``dictionary``)."""
