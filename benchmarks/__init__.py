"""Performance scripts: each prints its measurements and ends with a line ``ratio: X`` (ours / baseline)."""
