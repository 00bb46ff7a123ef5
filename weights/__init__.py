"""The default model's weights, installed with the package as ``stablecodec.bundled``."""
