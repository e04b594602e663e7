"""Metrics, statistics and logs: beside the data and control planes, used by both."""
