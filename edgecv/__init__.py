"""edgecv: train, compress, export and deploy CNN image classifiers to edge devices."""

__version__ = "0.1.0"
