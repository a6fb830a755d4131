"""The deploy bundle format: file names, the manifest's schema and self-checksum, the preprocessing spec, reading
a bundle confined to its checksummed files, trust and signature verification, an install root's slots and state,
golden vectors and the TensorRT calibration-cache format. Device and workstation both read it; it imports nothing
above edgecv.errors, edgecv.utils, edgecv.targets and edgecv.metrics."""
