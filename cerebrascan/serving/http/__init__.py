"""HTTP pieces around the BentoML service: middleware and plain routes."""
