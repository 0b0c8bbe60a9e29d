"""Readers of the log: the uploader, the projector and the stale checker."""
