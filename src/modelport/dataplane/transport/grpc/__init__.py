"""gRPC: inference.GRPCInferenceService and grpc.health.v1.Health."""
