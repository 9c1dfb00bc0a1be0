"""TFLite conversion of trained runs: float32, float16, dynamic-range and full-integer int8."""

# here, not in convert.tflite: the command line checks --variants before TensorFlow is imported
VARIANTS = ("float32", "float16", "dynamic", "int8")
