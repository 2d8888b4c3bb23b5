"""Tumour type, grade, IDH and MGMT classifiers from radiomics (research use only).

Cohorts of typed phantoms (:mod:`.cohort`), their features (:mod:`.features`), calibrated
scikit-learn models with an out-of-distribution check (:mod:`.models`), the DVC stages
(:mod:`.pipeline`), model folders and the MLflow registry (:mod:`.model_registry`) and serving
(:mod:`.serving`, used by the ``classification`` and ``radiogenomics`` analyzers).
"""
