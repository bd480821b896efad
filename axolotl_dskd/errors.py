"""The one error type a user sees for a setting the plugin cannot honour."""


class DSKDConfigError(ValueError):
    """A dskd_* setting that cannot be honoured; the message names the key and the fix."""


class NonFiniteError(RuntimeError):
    """A tensor the run trains against is NaN or inf; the message says which and what to do."""
