"""Errors that are the user's to fix: the CLI prints their message on one line, no stack trace."""


class ModalignError(Exception):
    """Base class for mistakes in input, configuration or data that the user can correct."""


class ConfigError(ModalignError):
    """A configuration file or ``--set`` override is invalid."""


class DataError(ModalignError):
    """A manifest, feature store or embeddings file is invalid; the message names file, row, field."""
