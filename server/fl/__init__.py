"""Federated learning on the aggregator: the Flower ServerApp, its round state, aggregation, DP guard, SecAgg+ round and checkpoints."""
