"""Configuration: the server settings and each model's Triton-style config."""
