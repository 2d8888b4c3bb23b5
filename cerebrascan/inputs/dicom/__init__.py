"""DICOM input: a scanner's study (zip or files) -> one :class:`~cerebrascan.inputs.study.Study`.

- :mod:`.archive`: safe unzip / multipart files (caps, unsafe members refused);
- :mod:`.index`: headers read without pixels, grouped into series;
- :mod:`.selection` + ``rules/default_rules.json``: one series per contrast by rules;
- :mod:`.geometry`: slice geometry and the stack checks (missing slice, shear, ...);
- :mod:`.volumes`: highdicom volumes (single-frame and Enhanced MR multiframe), LPS -> RAS;
- :mod:`.grid`: reorientation and resampling onto the reference grid by DICOM geometry;
- :mod:`.study_builder`: volumes -> reference grid -> optional brain mask -> ``Study``;
- :mod:`.inventory`: the header-only answer of ``POST /dicom/inspect``;
- :mod:`.upload`: the entry points the transports call;
- :mod:`.settings`: the ``dicom`` section.
"""
