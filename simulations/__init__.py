"""fedcogen.simulations: experiments, synthetic private data, benchmarks and reports."""
