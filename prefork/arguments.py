"""Runs in the `prefork` command's process: argparse value types for `prefork tune` and `prefork ctl`.

Each turns text into a value or raises argparse.ArgumentTypeError with the
problem, which the parser reports in one line with exit status 2.
"""

import argparse


def count_list(most):
    """An argparse type: '1,2,4' to a sorted list of distinct whole numbers in 1..most."""
    def parse(text):
        values = set()
        for item in text.split(","):
            item = item.strip()
            if not (item.isascii() and item.isdigit()):
                raise argparse.ArgumentTypeError(f"{item!r} is not a whole number (expected a list such as 1,2,4)")
            if not 1 <= int(item) <= most:
                raise argparse.ArgumentTypeError(f"must be between 1 and {most}, got {int(item)}")
            values.add(int(item))
        return sorted(values)
    return parse


def whole_number(most):
    """An argparse type: a whole number in 1..most."""
    def parse(text):
        values = count_list(most)(text)
        if "," in text:
            raise argparse.ArgumentTypeError(f"expected one whole number, got {text!r}")
        return values[0]
    return parse


def positive_number(text):
    """A number of seconds (or any quantity) above 0, and finite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value
