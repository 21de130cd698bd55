"""fedcogen.server: what runs on the aggregator, ``fl`` (the Flower ServerApp), and in the cloud, ``cogen``
(the CoGenesis service); the two never import each other."""
