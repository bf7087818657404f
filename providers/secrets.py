"""Provider keys: read from an environment variable or a file, wrapped so they never print."""

import os
from pathlib import Path

from providers.errors import GatewayError


class MissingSecret(GatewayError):
    status = 500
    code = "missing_secret"


class Secret:
    """A string that refuses to show itself in repr, str, format, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str:
        raise TypeError("a Secret cannot be pickled")


def load_secret(*, env: str | None, file: str | None, what: str) -> Secret | None:
    """The secret named by `env` or `file`; None when neither is configured.

    Raises MissingSecret (naming the variable or path, never a value) when it is configured but absent.
    """
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise MissingSecret(f"{what}: environment variable {env} is not set or empty")
        return Secret(value)
    if file:
        try:
            value = Path(file).read_text().strip()
        except OSError as exc:
            raise MissingSecret(f"{what}: cannot read key file {file} ({exc.strerror})") from None
        if not value:
            raise MissingSecret(f"{what}: key file {file} is empty")
        return Secret(value)
    return None
