"""Federated learning on a device: the Flower ClientApp, its local training, update compression and per-client state."""
