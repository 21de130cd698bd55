"""Benchmarks: communication, codec, CoGenesis speed and wire, load, fuzz, scale, adapters, and the whole suite."""
