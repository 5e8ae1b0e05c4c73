"""Sinks receive the trainer's events and turn them into files, curves and console output."""
