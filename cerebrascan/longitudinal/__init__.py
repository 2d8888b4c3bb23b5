"""Longitudinal analysis: a patient's visits compared.

``response.py`` (volumetric response categories), ``registration.py`` (rigid registration of a
visit to a prior one), ``timeline.py`` (the patient timeline from stored studies), ``plot.py``
(its PNG) and ``settings.py`` (the ``longitudinal`` section). The ``delta`` analyzer and
``GET /patients/{id}/timeline`` use them.
"""
