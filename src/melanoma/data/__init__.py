"""Data: raw metadata and images -> a prepared dataset directory -> split -> torch datasets."""
