"""fedcogen.protocols: the contract both sides share: the two wire contracts (``cogen.proto``, ``fl_messages``),
``codecs``, ``security`` and ``privacy`` (DP)."""
