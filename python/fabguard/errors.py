"""The one exception type for bad input, so callers can tell it from a bug."""


class InputError(ValueError):
    """Input data or arguments that fabguard refuses, with a message that says what and where."""
