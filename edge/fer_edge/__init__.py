"""fer-edge: facial expression recognition on a Raspberry Pi, headless."""

__version__ = "0.1.0"
