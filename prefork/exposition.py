"""Runs in the master: metric families written in Prometheus's text format, or OpenMetrics when asked.

Written here rather than with prometheus-client: the master already holds
every figure (the scoreboard, its worker table, the psutil samples), so all
that is needed is the format, about sixty lines; the client's registry and
its multiprocess directory solve a problem the master does not have. The
tests parse what this writes with prometheus-client's own parsers.
"""

import math
from typing import NamedTuple, Sequence

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class Family(NamedTuple):
    """One metric: name (a counter's without _total), kind (counter, gauge or histogram), help, samples.

    A sample is (labels, value), labels a tuple of (name, value) pairs. A
    histogram's value is (bucket counts, not cumulative, +Inf last; sum), and
    bounds gives the buckets' upper bounds.
    """

    name: str
    kind: str
    help: str
    samples: Sequence[tuple]
    bounds: Sequence[float] = ()


def render(families, openmetrics=False):
    """The families as the exposition format's bytes."""
    lines = []
    for family in families:
        name = family.name
        typed = name + "_total" if family.kind == "counter" and not openmetrics else name
        lines.append(f"# HELP {typed} {_escape_help(family.help)}")
        lines.append(f"# TYPE {typed} {family.kind}")
        for labels, value in family.samples:
            if family.kind == "histogram":
                lines.extend(_histogram(name, labels, value, family.bounds))
            else:
                suffix = "_total" if family.kind == "counter" else ""
                lines.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")
    if openmetrics:
        lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _histogram(name, labels, value, bounds):
    counts, total = value
    cumulative = 0
    for bound, count in zip((*bounds, math.inf), counts):
        cumulative += count
        yield f"{name}_bucket{_labels((*labels, ('le', _number(float(bound)))))} {cumulative}"
    yield f"{name}_count{_labels(labels)} {cumulative}"
    yield f"{name}_sum{_labels(labels)} {_number(total)}"


def _labels(labels):
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape_value(str(value))}"' for key, value in labels) + "}"


def _escape_value(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value):
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def wants_openmetrics(accept):
    """Whether an Accept header asks for OpenMetrics (as Prometheus's scraper does)."""
    return "application/openmetrics-text" in (accept or "")
