"""Which error a pass acts on when several parts fail at once (pure logic)."""

from __future__ import annotations

from cefmp4.common.errors import FileChanged, Stopping, StorageError
from cefmp4.consumer.partio import deciding_error


def test_a_file_change_wins_over_an_outage() -> None:
    outage = StorageError("upload part 2: connection refused", retryable=True)
    change = FileChanged("short read of part 3")

    assert deciding_error(ExceptionGroup("parts", [outage, change])) is change


def test_a_refusal_for_good_wins_over_an_outage_even_when_nested() -> None:
    outage = StorageError("upload part 1: 503", retryable=True)
    refused = StorageError("upload part 2: AccessDenied", code="AccessDenied")
    nested = ExceptionGroup("parts", [outage, ExceptionGroup("inner", [refused])])

    assert deciding_error(nested) is refused


def test_stopping_wins_over_everything() -> None:
    stopping = Stopping("stopping before part 4")
    group = ExceptionGroup("parts", [FileChanged("x"), StorageError("y"), stopping])

    assert deciding_error(group) is stopping


def test_an_outage_alone_stays_retryable() -> None:
    outage = StorageError("upload part 1: connection refused", retryable=True)

    chosen = deciding_error(ExceptionGroup("parts", [outage]))

    assert isinstance(chosen, StorageError) and chosen.retryable
