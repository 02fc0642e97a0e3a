"""GLAM (Global-Local Activation Maps) as a MONAI bundle.

Sub-packages: ``networks`` (global module, patch selection, local module, GLAM composite),
``data`` (readers, datalists, synthetic phantoms), ``transforms`` (mammogram preprocessing),
``inference`` (writers of the inference workflow).
"""

__version__ = "0.1.0"
