"""Mammogram data for the GLAM bundle.

- ``readers``: ``MammogramReader`` / ``MammogramDicomReader`` and the image suffixes they read.
- ``errors``: ``BadInputError``, raised for unusable input files.
- ``datalist``: the datalist JSON format (``load_datalist``, ``write_datalist``, ``datalist_from_folder``).
- ``splits``: training/validation/test splits by patient (``patient_level_split``, ``split_items``).
- ``builders``: datalist items from NYU, CBIS-DDSM, VinDr-Mammo, mini-MIAS and generic CSV annotations.
- ``failures``: keeping a run going past bad cases (``SkipBadCases``, ``collate_skip_failures``,
  ``write_failures_csv``); ``robust`` is its former name, kept for existing configs.
- ``cache``: cached datasets (``make_cached_dataset``).
- ``phantom``: synthetic mammogram phantoms with known lesions and masks.

Submodules are imported explicitly (``glam_bundle.data.readers`` ...) so that importing one does not pull in
the dependencies of the others.
"""
