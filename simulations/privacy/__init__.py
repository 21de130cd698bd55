"""Privacy experiments: attacks, wire and span audits, the privacy run, DP at scale, SecAgg+ experiments and the span corpora."""
