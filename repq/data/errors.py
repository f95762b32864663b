"""Errors for bad input data, each naming what is wrong."""


class DataError(RuntimeError):
    """A dataset is missing, empty or unreadable."""
