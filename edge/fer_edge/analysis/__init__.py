"""Offline commands: the events report and per-stage timings."""
