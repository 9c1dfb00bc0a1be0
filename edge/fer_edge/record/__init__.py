"""Crash-safe recording: fragmented MP4 segments, the events log, recovery, disk and fsync."""
