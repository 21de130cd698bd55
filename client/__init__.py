"""fedcogen.client: what runs on a device (Flower ClientApp, CoGenesis device generation)."""
