"""What is seen in a frame: faces found, followed, read, smoothed, hidden and drawn."""
