"""The model repository on disk, in Triton's layout."""
