"""Brain extraction of skull-on MR volumes (deepbet on ONNX Runtime; ``docs/brain_extraction.md``).

:class:`BrainExtractor` gives the bool brain mask of a 3D volume; ``export.py`` (offline, torch)
writes the ONNX files from the published weights. May import ``imaging/`` and ``schemas/``.
"""

from cerebrascan.brain_extraction.extractor import BrainExtractor
from cerebrascan.brain_extraction.settings import BrainExtractionSettings

__all__ = ["BrainExtractionSettings", "BrainExtractor"]
