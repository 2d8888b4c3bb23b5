"""Cohorts: thousands of studies from a manifest to one results table, on Ray Data."""
