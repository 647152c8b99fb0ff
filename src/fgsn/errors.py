"""Error types: every failure a user can cause is one of these, with a message that names the
problem and what to do about it. Anything else escaping fgsn is a bug."""

from __future__ import annotations


class FgsnError(Exception):
    """Base class for all errors fgsn raises on purpose."""


class InputError(FgsnError, ValueError):
    """A path, model, adapter or prompt file given by the user cannot be used as it is."""


class ConfigError(InputError):
    """A config file or option has an unknown key, a wrong type or an impossible value."""


class MismatchError(InputError):
    """Models that must agree (architecture, tensor names, shapes, dtypes, vocab) do not."""


class IntegrityError(FgsnError):
    """A saved artifact (ledger, mask file, checkpoint) is corrupt, truncated or tampered with."""


class LedgerError(InputError):
    """The continual ledger refuses the operation: the inputs do not continue it (another model,
    another editor, a category it already holds) or another run holds it."""


class NumericalError(FgsnError):
    """NaN or Inf met in weights or in computed scores."""
