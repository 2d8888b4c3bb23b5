"""Structured radiology-style reports of stored studies (``GET /studies/{id}/report``).

``findings`` reads the stored results into report sections, ``template_writer`` and
``llm_writer`` write the narrative, ``grounding`` checks an LLM's narrative against the
findings, ``overlay`` draws the key image, ``render`` makes Markdown / HTML / PDF and
``study_reports`` does the study-folder I/O. See ``docs/report.md``.
"""
