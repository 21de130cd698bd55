"""The decoding rules of the CoGenesis device, as siblings behind one interface (``base.Decoder``)."""
