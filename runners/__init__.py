"""Segmentation runners: execute a network over a whole preprocessed volume."""
