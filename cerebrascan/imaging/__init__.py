"""Image input/output, validation, and the maths that prepares images for a network."""
