"""Errors raised for unusable input files (bad images, masks or DICOMs)."""

from __future__ import annotations

import os

from glam_bundle.errors import UserError

__all__ = ["BadInputError"]


class BadInputError(UserError, ValueError):
    """An input file cannot be used: missing, unreadable, or with content the model cannot take.

    A :class:`glam_bundle.errors.UserError`: when one ends a run (a datalist or folder that cannot be read), it is
    printed as one line ``error: <path>: <problem>`` (one bad image among many is only reported, see
    :mod:`glam_bundle.data.failures`).

    The message always starts with the file path so that a failure report can be traced back to the
    datalist entry, e.g. ``"/data/a.png: RGB image (3 channels); expected one grayscale channel"``.

    Args:
        path: the offending file.
        problem: what is wrong with it, as a short phrase.

    Attributes:
        path: the offending file, as a string.
        problem: the problem phrase.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # ValueError pickles its args (the formatted message); keep (path, problem) instead so the error
        # survives DataLoader worker processes unchanged.
        return self.__class__, (self.path, self.problem)
