"""Inputs: one adapter per transport, each ending in a decoded, checked :class:`~.study.Study`.

- :mod:`.nifti`: the four NIfTI uploads of ``POST /analyze`` (``read_uploads``);
- :mod:`.case_folder`: a BraTS-style case folder on disk (``read_case``; training, cohorts);
- :mod:`.oip`: the tensors of a gRPC ``ModelInfer`` call (``decode_infer_request``);
- :mod:`.dicom`: a DICOM study of ``POST /analyze/dicom``: index an archive, select the series
  per contrast, put them on the reference grid, extract the brain, build the ``Study``.

Every adapter applies the same grid and voxel checks (:func:`.study.check_grid`,
:func:`.study.check_voxel_values`) and raises :class:`cerebrascan.errors.InputError` (4xx) with a
message that names the bad field and value. ``settings.py`` holds the ``limits`` section.
"""
