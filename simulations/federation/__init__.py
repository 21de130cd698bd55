"""Running the federation: Flower simulation and ``flwr run`` drivers, the app as shipped, process supervision, the fault-injecting test ClientApp."""
