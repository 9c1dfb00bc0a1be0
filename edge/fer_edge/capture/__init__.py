"""Camera frames: picamera2, OpenCV capture, video files and image folders."""
