"""The live data plane: admission, batching, routing, replicas, the controller."""
