"""Value checks shared by the command-line options of the twistd plugins."""

from __future__ import annotations


def seconds(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError(f"{value} is not a number of seconds >= 0")
    return number


def positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"{value} is not a positive number")
    return number
