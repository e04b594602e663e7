"""REST: Open Inference Protocol v2, Triton's HTTP extensions and KServe v1."""
