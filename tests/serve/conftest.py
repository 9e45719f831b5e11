"""Fixtures of the serve tests: the reduced model exported once."""

from tests.runtime.reduced_export import reduced  # noqa: F401  (the session fixture)
