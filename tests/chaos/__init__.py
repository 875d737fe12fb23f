"""Failure tests: dependencies killed and restarted, processes killed mid-work."""
