"""Measurement: latency, memory, accuracy and environment; runtimes never time themselves."""
