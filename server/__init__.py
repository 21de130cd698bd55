"""fedcogen.server: what runs in the cloud (CoGenesis service) or on the aggregator (Flower ServerApp)."""
