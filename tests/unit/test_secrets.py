"""providers/secrets.py: a provider key never shows itself, and loading one names where, never what."""

import copy
import json
import logging
import pickle
import traceback
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from providers.secrets import MissingSecret, Secret, load_secret

VALUE = "sk-live-THE-ACTUAL-KEY-0123456789"
FRAGMENT = "THE-ACTUAL-KEY"


@pytest.fixture
def secret() -> Secret:
    return Secret(VALUE)


def test_reveal_is_the_only_way_out(secret: Secret) -> None:
    assert secret.reveal() == VALUE


@pytest.mark.parametrize(
    "show",
    [
        repr,
        str,
        lambda s: f"{s}",
        lambda s: f"{s!r}",
        lambda s: f"{s!s}",
        lambda s: f"{s:>40}",
        lambda s: format(s),
        lambda s: "{}".format(s),
        lambda s: "{0!r}".format(s),
        lambda s: "%s" % s,
        lambda s: "%r" % (s,),
        lambda s: "key=%(k)s" % {"k": s},
        lambda s: repr([s, {"key": s}]),
        lambda s: str((s,)),
    ],
    ids=[
        "repr",
        "str",
        "fstring",
        "fstring-r",
        "fstring-s",
        "fstring-spec",
        "format",
        "str.format",
        "str.format-r",
        "percent-s",
        "percent-r",
        "percent-mapping",
        "in-containers",
        "in-tuple-str",
    ],
)
def test_secret_never_renders_its_value(secret: Secret, show: Callable[[Secret], str]) -> None:
    text = show(secret)
    assert FRAGMENT not in text
    assert "*" in text


def test_secret_never_reaches_log_records(secret: Secret, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("escalade.test.secrets")
    with caplog.at_level(logging.DEBUG, logger="escalade.test.secrets"):
        log.info("provider key is %s", secret)
        log.info("provider key is %r", secret)
        log.info("headers %s", {"authorization": secret})
        log.info(secret)
        try:
            raise RuntimeError(secret)
        except RuntimeError:
            log.exception("failed with %s", secret)
    assert len(caplog.records) == 5
    assert FRAGMENT not in caplog.text
    for record in caplog.records:
        assert FRAGMENT not in record.getMessage()


def test_secret_never_reaches_exception_messages_or_tracebacks(secret: Secret) -> None:
    try:
        raise ValueError(f"bad key {secret}", secret)
    except ValueError as exc:
        assert FRAGMENT not in str(exc)
        assert FRAGMENT not in repr(exc)
        assert FRAGMENT not in "".join(traceback.format_exception(exc))


def test_secret_is_not_serialisable(secret: Secret) -> None:
    with pytest.raises(TypeError) as caught:
        pickle.dumps(secret)
    assert FRAGMENT not in str(caught.value)
    with pytest.raises(TypeError) as caught_json:
        json.dumps({"key": secret})
    assert FRAGMENT not in str(caught_json.value)
    with pytest.raises(TypeError) as caught_msgspec:
        msgspec.json.encode({"key": secret})
    assert FRAGMENT not in str(caught_msgspec.value)
    with pytest.raises(TypeError):
        copy.copy(secret)


def test_secret_has_no_instance_dict_to_dump(secret: Secret) -> None:
    assert not hasattr(secret, "__dict__")
    with pytest.raises(TypeError):
        vars(secret)


def test_secrets_compare_by_value_without_showing_it() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a", "a Secret is not equal to the plain string (no accidental str comparisons)"
    assert len({Secret("a"), Secret("a"), Secret("b")}) == 2


# ---------------------------------------------------------------- load_secret


def test_load_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESCALADE_TEST_KEY", f"  {VALUE}\n")
    got = load_secret(env="ESCALADE_TEST_KEY", file=None, what="provider openai")
    assert got == Secret(VALUE)


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "openai"
    path.write_text(VALUE + "\n")
    assert load_secret(env=None, file=str(path), what="provider openai") == Secret(VALUE)


def test_nothing_configured_is_none() -> None:
    assert load_secret(env=None, file=None, what="provider local") is None


@pytest.mark.parametrize("value", [None, ""])
def test_missing_env_names_the_variable_never_a_value(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    monkeypatch.setenv("SOME_OTHER_KEY", VALUE)
    if value is None:
        monkeypatch.delenv("ESCALADE_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("ESCALADE_TEST_KEY", value)
    with pytest.raises(MissingSecret) as caught:
        load_secret(env="ESCALADE_TEST_KEY", file=None, what="provider openai")
    error = caught.value
    assert "ESCALADE_TEST_KEY" in error.message
    assert "provider openai" in error.message
    assert FRAGMENT not in error.message
    assert error.status == 500
    assert error.to_body().error.code == "missing_secret"


def test_missing_file_names_the_path_never_a_value(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(MissingSecret) as caught:
        load_secret(env=None, file=str(path), what="provider openai")
    assert str(path) in caught.value.message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_unreadable_key_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(MissingSecret) as caught:
        load_secret(env=None, file=str(tmp_path), what="provider openai")  # a directory
    assert str(tmp_path) in caught.value.message


def test_whitespace_only_env_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESCALADE_TEST_KEY", "  \n")
    with pytest.raises(MissingSecret):
        load_secret(env="ESCALADE_TEST_KEY", file=None, what="provider openai")


def test_empty_key_file_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "openai"
    path.write_text("\n")
    with pytest.raises(MissingSecret):
        load_secret(env=None, file=str(path), what="provider openai")
