"""Transport and identity: TLS material, Flower node keys, secrets read from files."""
