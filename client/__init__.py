"""fedcogen.client: what runs on a device: ``fl`` (the Flower ClientApp and its training) and ``cogen``
(CoGenesis device generation), which never import each other."""
