"""Labelling: the store, batches with honeypots, ingest and quality control (in progress)."""
