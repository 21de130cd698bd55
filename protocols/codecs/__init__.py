"""Wire codecs both sides share: the sparse update format and codec, index coding, top-k, value quantisation, logit codec."""
