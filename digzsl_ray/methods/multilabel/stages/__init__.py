"""The multi-label method's pipeline stages."""
