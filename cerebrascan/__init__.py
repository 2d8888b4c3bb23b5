"""CerebraScan: brain-tumour MRI segmentation and analysis server (research use only)."""

__version__ = "0.1.0"
