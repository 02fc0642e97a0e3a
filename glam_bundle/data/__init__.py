"""Mammogram data: readers (``readers``), bad-input errors (``errors``), datalists and their builders
(``datalist``), datasets that skip bad cases (``robust``) and synthetic phantoms (``phantom``).

Submodules are imported explicitly (``glam_bundle.data.readers`` ...) so that importing one does not pull in
the dependencies of the others.
"""
