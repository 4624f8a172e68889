"""fleetscore.errors.one_line: the one-line form of an exception that every adapter's error uses."""

from __future__ import annotations

from fleetscore.errors import ONE_LINE_LIMIT, one_line


def test_first_non_blank_line_with_blanks_collapsed() -> None:
    exc = RuntimeError("\n  (sqlite3.OperationalError)   unable to open\tdatabase file\n[SQL: SELECT 1]\n")
    assert one_line(exc) == "(sqlite3.OperationalError) unable to open database file"
    assert one_line(exc, with_type=True) == "RuntimeError: (sqlite3.OperationalError) unable to open database file"


def test_empty_message_gives_the_class_name() -> None:
    assert one_line(KeyError()) == "KeyError"
    assert one_line(ValueError("   \n"), with_type=True) == "ValueError"


def test_long_lines_are_capped_and_strings_are_shortened_as_text() -> None:
    assert len(one_line(ValueError("x" * 1000))) == ONE_LINE_LIMIT
    assert one_line("Operation returned an invalid status 'Not Found'\nCode: 404") == \
        "Operation returned an invalid status 'Not Found'"
