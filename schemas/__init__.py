"""Pydantic schemas: the contracts at CerebraScan's edges (HTTP, registry artefacts)."""
