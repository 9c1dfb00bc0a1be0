"""What leaves the device while it runs: the live view, metrics, MQTT and the switches."""
