"""Radiomics features (pyradiomics) of tumour sub-regions; see :mod:`cerebrascan.radiomics.extract`.

Needs the optional ``radiomics`` extra (``pyradiomics-bhklab``), imported on first use.
"""
