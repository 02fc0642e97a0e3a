"""GLAM (Global-Local Activation Maps) as a MONAI bundle.

Sub-packages: ``networks`` (global module, patch selection, local module, GLAM composite),
``data`` (readers, datalists, synthetic phantoms), ``transforms`` (mammogram preprocessing),
``inference`` (writers of the inference workflow).

Importing the package installs the error hook of :mod:`glam_bundle.errors`: a mistake the user can fix (a
missing checkpoint or folder, a bad setting) ends a run with one line ``error: ...`` on stderr and exit status 2
instead of MONAI's chained tracebacks; ``GLAM_DEBUG=1`` shows the full traceback. See docs/troubleshooting.md.
"""

from glam_bundle import errors as _errors

__version__ = "0.1.0"

_errors.install()
