"""Consul's ``filter`` expressions (a subset of go-bexpr), parsed and evaluated over the
JSON objects Consul's answers hold; pure.

Grammar (keywords in any case)::

    expr     := and ("or" and)*
    and      := unary ("and" unary)*
    unary    := "not" unary | "(" expr ")" | match
    match    := selector ("==" | "!=") value
              | selector ["not"] ("contains" | "matches") value
              | value ["not"] "in" selector
              | selector "is" ["not"] "empty"
    selector := name ("." name | "[" string "]")*
    value    := "string" | `string` | number | true | false

A selector walks the object's keys (any case); through a list it means "any element"
(``Checks.Status == "critical"``: some check is critical). ``contains`` and ``in`` test
list membership, map keys or substrings; ``matches`` is a regular expression search.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import re2  # type: ignore[import-untyped]

from waypost.errors import InvalidInput

MAX_FILTER_LEN = 4096
MAX_DEPTH = 32
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
    | (?P<number>-?[0-9]+(?:\.[0-9]+)?)(?![A-Za-z0-9_])
    | (?P<op>==|!=|\(|\)|\[|\]|\.)
    | (?P<word>[A-Za-z_][A-Za-z0-9_\-/]*)
    )""",
    re.X,
)
KEYWORDS = {"and", "or", "not", "in", "contains", "matches", "is", "empty", "true", "false"}

Predicate = Callable[[Any], bool]


class FilterError(InvalidInput):
    """A filter that does not parse: Consul answers 400 with this text."""


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "string", "number", "op", "word", "end"
    text: str
    at: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"filter: unexpected {text[pos:].strip()[:20]!r} at {pos}")
        kind = m.lastgroup or "word"
        out.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return re.sub(r"\\(.)", r"\1", text[1:-1])


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self, n: int = 0) -> _Tok:
        return self.toks[min(self.i + n, len(self.toks) - 1)]

    def word(self, n: int = 0) -> str:
        t = self.peek(n)
        return t.text.lower() if t.kind == "word" else ""

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect_word(self, word: str) -> None:
        if self.word() != word:
            self.fail(f"expected {word!r}")
        self.take()

    def fail(self, what: str) -> None:
        t = self.peek()
        found = repr(t.text) if t.kind != "end" else "the end"
        raise FilterError(f"filter: {what}, found {found} at {t.at}")

    def parse(self) -> Predicate:
        pred = self.expr()
        if self.peek().kind != "end":
            self.fail("expected 'and', 'or' or the end")
        return pred

    def expr(self) -> Predicate:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail("nested too deep")
        parts = [self.conj()]
        while self.word() == "or":
            self.take()
            parts.append(self.conj())
        self.depth -= 1
        if len(parts) == 1:
            return parts[0]
        return lambda obj: any(p(obj) for p in parts)

    def conj(self) -> Predicate:
        parts = [self.unary()]
        while self.word() == "and":
            self.take()
            parts.append(self.unary())
        if len(parts) == 1:
            return parts[0]
        return lambda obj: all(p(obj) for p in parts)

    def unary(self) -> Predicate:
        if self.word() == "not":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self.fail("nested too deep")
            inner = self.unary()
            self.depth -= 1
            return lambda obj: not inner(obj)
        if self.peek().text == "(" and self.peek().kind == "op":
            self.take()
            inner = self.expr()
            if self.peek().text != ")":
                self.fail("expected ')'")
            self.take()
            return inner
        return self.match()

    def value(self) -> Any:
        t = self.peek()
        if t.kind == "string":
            self.take()
            return _unquote(t.text)
        if t.kind == "number":
            self.take()
            return float(t.text) if "." in t.text else int(t.text)
        if self.word() in ("true", "false"):
            self.take()
            return t.text.lower() == "true"
        self.fail("expected a value (a quoted string, a number, true or false)")
        raise AssertionError  # unreachable: fail raises

    def selector(self) -> list[str]:
        t = self.peek()
        if t.kind != "word" or t.text.lower() in KEYWORDS:
            self.fail("expected a selector (like Service.Tags)")
        path = [self.take().text]
        while self.peek().kind == "op" and self.peek().text in (".", "["):
            if self.take().text == ".":
                if self.peek().kind != "word":
                    self.fail("expected a name after '.'")
                path.append(self.take().text)
            else:
                if self.peek().kind != "string":
                    self.fail("expected a quoted key in [...]")
                path.append(_unquote(self.take().text))
                if self.peek().text != "]":
                    self.fail("expected ']'")
                self.take()
        return path

    def match(self) -> Predicate:
        t = self.peek()
        if t.kind in ("string", "number") or self.word() in ("true", "false"):
            value = self.value()
            negate = self.word() == "not"
            if negate:
                self.take()
            self.expect_word("in")
            path = self.selector()
            return _negated(negate, lambda obj: _contains(_select(obj, path), value))
        path = self.selector()
        op = self.peek()
        if op.kind == "op" and op.text in ("==", "!="):
            self.take()
            value = self.value()
            eq: Predicate = lambda obj: any(_equal(v, value) for v in _leaves(obj, path))  # noqa: E731
            return _negated(op.text == "!=", eq)
        if self.word() == "is":
            self.take()
            negate = self.word() == "not"
            if negate:
                self.take()
            self.expect_word("empty")
            return _negated(negate, lambda obj: _empty(_select(obj, path)))
        negate = self.word() == "not"
        if negate:
            self.take()
        verb = self.word()
        if verb == "contains":
            self.take()
            value = self.value()
            return _negated(negate, lambda obj: _contains(_select(obj, path), value))
        if verb == "matches":
            self.take()
            pattern = self.value()
            if not isinstance(pattern, str):
                self.fail("matches takes a quoted regular expression")
            rx = _linear_regex(pattern)
            return _negated(
                negate,
                lambda obj: any(isinstance(v, str) and rx.search(v) for v in _leaves(obj, path)),
            )
        self.fail("expected ==, !=, contains, matches, in or is empty")
        raise AssertionError  # unreachable: fail raises


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is the client's 400, not our stderr


def _linear_regex(pattern: str) -> Any:
    """``pattern`` compiled by RE2, as Consul's Go regexp does: matching time is linear
    in the subject, whatever the pattern (Python's backtracking ``re`` ran the client's
    ``(a|a)*b`` for seconds on the event loop). RE2's syntax is Go's."""
    try:
        return re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        why = exc.args[0] if exc.args else exc
        why = why.decode(errors="replace") if isinstance(why, bytes) else str(why)
        raise FilterError(f"filter: bad regular expression {pattern!r}: {why}") from None


def _negated(negate: bool, pred: Predicate) -> Predicate:
    return (lambda obj: not pred(obj)) if negate else pred


_MISSING = object()


def _step(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        if name in obj:
            return obj[name]
        lowered = name.lower()
        for key, value in obj.items():
            if isinstance(key, str) and key.lower() == lowered:
                return value
    return _MISSING


def _select(obj: Any, path: list[str]) -> Any:
    """The value at ``path``; through a list, the list of what each element has there."""
    cur = obj
    for n, name in enumerate(path):
        if isinstance(cur, list):
            rest = path[n:]
            found = [_select(item, rest) for item in cur]
            return [f for f in found if f is not _MISSING]
        cur = _step(cur, name)
        if cur is _MISSING:
            return _MISSING
    return cur


def _leaves(obj: Any, path: list[str]) -> list[Any]:
    """The values a comparison looks at: the value, or each value through lists."""
    cur = obj
    for n, name in enumerate(path):
        if isinstance(cur, list):
            return [leaf for item in cur for leaf in _leaves(item, path[n:])]
        cur = _step(cur, name)
        if cur is _MISSING:
            return []
    return [cur]


def _equal(have: Any, want: Any) -> bool:
    if isinstance(want, bool):
        return have is want
    if isinstance(want, int | float) and isinstance(have, int | float):
        return bool(have == want)
    if isinstance(want, str) and isinstance(have, int | float) and not isinstance(have, bool):
        return str(have) == want
    return bool(have == want)


def _contains(have: Any, want: Any) -> bool:
    if have is _MISSING or have is None:
        return False
    if isinstance(have, str):
        return isinstance(want, str) and want in have
    if isinstance(have, dict):
        return want in have
    if isinstance(have, list):
        return any(_equal(h, want) or (isinstance(h, list) and want in h) for h in have)
    return False


def _empty(have: Any) -> bool:
    return have is _MISSING or have is None or (hasattr(have, "__len__") and len(have) == 0)


def compile_filter(text: str) -> Predicate:
    """A predicate over one answer object; FilterError (400) when ``text`` is not a
    filter this subset reads."""
    if len(text) > MAX_FILTER_LEN:
        raise FilterError(f"filter: longer than {MAX_FILTER_LEN} characters")
    if not text.strip():
        raise FilterError("filter: empty")
    return _Parser(text).parse()
