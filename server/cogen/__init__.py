"""CoGenesis in the cloud: the gRPC service and servicer, request batching, KV slots, engine backend and auth."""
