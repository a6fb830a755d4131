class DatasetError(ValueError):
    """A dataset path is missing, empty, or holds no readable images."""
