"""CoGenesis on a device: the device generator, fusion and decoding rules, private spans, the cloud client and wire capture."""
