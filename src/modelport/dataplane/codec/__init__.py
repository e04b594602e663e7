"""Wire formats ↔ core types: OIP JSON, Triton's binary extension, gRPC messages."""
