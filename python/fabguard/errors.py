"""Exceptions for input that fabguard refuses, so a caller can tell them from a bug.

Every one subclasses :class:`InputError` (a ``ValueError``) and says what is wrong and where (file,
row, column, batch, parameter). The CLI prints them as ``fabguard: error: ...`` and exits with 2.
"""


class InputError(ValueError):
    """Input data or arguments that fabguard refuses, with a message that says what and where."""


class InvalidParameterError(InputError, TypeError):
    """A parameter of a fabguard estimator or function outside what it accepts (names the parameter, the
    allowed values and the value given). Also a ``TypeError``, as scikit-learn's of the same name."""


class ModelFileError(InputError):
    """A model file or folder that is not a whole, valid fabguard model: missing or truncated parts, parts
    of different models, crafted metadata, or a pickle (never loaded: loading a model runs no code)."""


class ResourceError(InputError):
    """A size that cannot fit in the memory or disk at hand, refused before the work starts, with the
    estimated figure."""
