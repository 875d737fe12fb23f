"""The gRPC and HTTP entry points: server, interceptors, servicer, probes."""
