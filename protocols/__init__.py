"""fedcogen.protocols: the contract both sides share (the .proto, wire codecs, message schemas)."""
