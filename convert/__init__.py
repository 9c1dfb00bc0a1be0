"""TFLite conversion of trained runs: float32, float16, dynamic-range and full-integer int8."""
