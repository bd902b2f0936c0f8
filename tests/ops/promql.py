"""The metric names a PromQL expression selects, and Grafana's variables
filled in, so the tests can check alert rules and dashboard panels against
the series the service really exports.

Prometheus 2.42 has no /api/v1/parse_query, so names are found by a careful
scan: string literals, label matchers, ranges and grouping clauses are
removed first (their contents are label names, label values and durations,
never metric names); what is left is function and aggregation calls (an
identifier followed by "("), keywords, numbers, and the metric names.
"""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
_NAME_MATCHER = re.compile(r'__name__\s*(=~|!=|!~|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
# An identifier not glued to a word character or a dot before it: that
# leaves out the unit of a duration (the "m" of 5m), the exponent of 1e3,
# the digits of 0.5.
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)")
_CALL = re.compile(r"\s*\(")
KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
})


class UnsupportedExpression(ValueError):
    """An expression whose names cannot be read off statically (a __name__ regex)."""


def metric_names(expr: str) -> set[str]:
    """Every metric name the expression selects, as written (with its _total,
    _bucket, ... suffix)."""
    names: set[str] = set()
    for op, quoted in _NAME_MATCHER.findall(expr):
        if op != "=":
            raise UnsupportedExpression(f"__name__{op} selects names by pattern: {expr}")
        names.add(quoted[1:-1])
    text = _COMMENT.sub(" ", _STRING.sub('""', expr))
    text = _MATCHERS.sub("{}", text)
    previous = None
    while previous != text:  # subqueries nest ranges: [5m:1m] inside (...)[1h:]
        previous, text = text, _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word = match.group(1)
        if word.lower() in KEYWORDS:
            continue
        if _CALL.match(text, match.end()):
            continue  # a function or an aggregation: rate(, sum (, histogram_quantile(
        names.add(word)
    return names


def unknown_names(expr: str, known: set[str]) -> set[str]:
    """The names the expression selects that are not in ``known``."""
    return metric_names(expr) - known


# Grafana's own variables, as a query would be sent with a short time range
# and a 1 s scrape interval.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "__interval_ms": "15000",
    "__range_s": "300",
    "__range_ms": "300000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def grafana_variables(text: str) -> set[str]:
    return {a or b or c for a, b, c in _VARIABLE.findall(text)}


def fill_variables(text: str, values: dict[str, str]) -> str:
    """``text`` with each $var, ${var} or [[var]] replaced; KeyError for one
    that ``values`` and Grafana's built-ins do not define."""
    table = {**GRAFANA_BUILTINS, **values}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        return table[name]

    return _VARIABLE.sub(value, text)
