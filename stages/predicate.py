"""A tiny, safe row predicate language over table columns (no eval): ``clip_score < 0.25 and lang == 'en'``.

Grammar (keywords case-insensitive)::

    expr    := term ("or" term)*
    term    := factor ("and" factor)*
    factor  := "not" factor | "(" expr ")" | compare
    compare := operand OP operand | column "is" ["not"] "null" | column ["not"] "in" "(" literal, ... ")"
    operand := column | number | 'string' | "string" | true | false
    OP      := < <= > >= == != =

Evaluation follows SQL WHERE semantics: comparisons with a null are unknown (Kleene logic) and an
unknown result does not select the row. Parsing happens once (config validation); evaluation is
vectorised with pyarrow.compute.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from winnow.stages.errors import WinnowError

_TOKEN = re.compile(r"""\s*(?:
    (?P<num>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op><=|>=|==|!=|=|<|>)
  | (?P<punct>[(),])
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
)""", re.VERBOSE)
_OPS = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal,
        "==": pc.equal, "=": pc.equal, "!=": pc.not_equal}
_KEYWORDS = {"and", "or", "not", "is", "null", "in", "true", "false"}


@dataclass(frozen=True)
class Column:
    name: str


@dataclass(frozen=True)
class Predicate:
    """A parsed predicate: ``columns`` it reads, ``mask(table)`` the rows it selects."""

    text: str
    tree: tuple
    columns: tuple[str, ...]

    def check_columns(self, names: list[str], where: str) -> None:
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise WinnowError(f"{where}: predicate {self.text!r} uses column '{missing[0]}' which the input does "
                              f"not have (columns: {', '.join(names)})")

    def mask(self, table: pa.Table) -> pa.Array:
        """Boolean array, True where the predicate holds (null counts as False)."""
        return pc.fill_null(self.evaluate(table), False)

    def evaluate(self, table: pa.Table) -> pa.Array:
        """Boolean array with nulls where the result is unknown (a null compared): callers that must say
        why a row was not selected tell "false" from "unknown" with it."""
        self.check_columns(table.column_names, "where")
        out = _evaluate(self.tree, table)
        if isinstance(out, pa.Scalar):  # e.g. "true": broadcast
            out = pa.array([out.as_py()] * table.num_rows, pa.bool_())
        if isinstance(out, pa.ChunkedArray):
            out = out.combine_chunks()
        return out


    def conjuncts(self) -> list[Predicate]:
        """The top-level ``and`` terms, each with its own text (normalised), so a caller can say which
        term a row failed; a predicate with no top-level ``and`` is its own single term, text unchanged."""
        terms, stack = [], [self.tree]
        while stack:
            node = stack.pop()
            if node[0] == "and":
                stack += [node[2], node[1]]
            else:
                terms.append(node)
        if len(terms) == 1:
            return [self]
        return [Predicate(_show(t), t, tuple(dict.fromkeys(_columns(t)))) for t in terms]


def _show(node) -> str:
    """Text of a parsed tree (operands as the parser read them)."""
    if isinstance(node, Column):
        return node.name
    if not isinstance(node, tuple):
        return "true" if node is True else "false" if node is False else repr(node)
    op = node[0]
    if op in ("and", "or"):
        return f"({_show(node[1])} {op} {_show(node[2])})"
    if op == "not":
        return f"not {_show(node[1])}"
    if op == "const":
        return _show(node[1])
    if op in ("is_null", "not_null"):
        return f"{node[1].name} is {'not ' if op == 'not_null' else ''}null"
    if op in ("in", "not_in"):
        return f"{node[1].name} {'not ' if op == 'not_in' else ''}in ({', '.join(_show(v) for v in node[2])})"
    return f"{_show(node[2])} {node[1]} {_show(node[3])}"


def _columns(node) -> list[str]:
    if isinstance(node, Column):
        return [node.name]
    if isinstance(node, tuple):  # operator names and literals are not columns
        return [c for part in node for c in _columns(part)]
    return []


def parse_predicate(text: str) -> Predicate:
    """Parse ``text`` or raise a one-line WinnowError saying where it went wrong."""
    parser = _Parser(text)
    tree = parser.expr()
    if parser.peek() is not None:
        parser.fail(f"unexpected '{parser.peek()[1]}'")
    return Predicate(text, tree, tuple(dict.fromkeys(parser.columns)))


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens: list[tuple[str, object]] = []
        self.columns: list[str] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                self.fail(f"cannot read {text[pos:].strip()[:20]!r}")
            kind = m.lastgroup
            raw = m.group(kind)
            if kind == "num":
                value: object = float(raw) if any(c in raw for c in ".eE") else int(raw)
            elif kind == "str":
                value = re.sub(r"\\(.)", r"\1", raw[1:-1])
            elif kind == "name" and raw.lower() in _KEYWORDS:
                kind, value = "kw", raw.lower()
            else:
                value = raw
            self.tokens.append((kind, value))
            pos = m.end()
        self.i = 0

    def fail(self, msg: str):
        raise WinnowError(f"where: cannot parse predicate {self.text!r}: {msg}")

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, kind: str, value=None):
        tok = self.peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1] != value):
            self.fail(f"expected {value or kind}, got {'end of text' if tok is None else repr(tok[1])}")
        self.i += 1
        return tok[1]

    def accept(self, kind: str, value) -> bool:
        if self.peek() == (kind, value):
            self.i += 1
            return True
        return False

    def expr(self):
        node = self.term()
        while self.accept("kw", "or"):
            node = ("or", node, self.term())
        return node

    def term(self):
        node = self.factor()
        while self.accept("kw", "and"):
            node = ("and", node, self.factor())
        return node

    def factor(self):
        if self.accept("kw", "not"):
            return ("not", self.factor())
        if self.accept("punct", "("):
            node = self.expr()
            self.take("punct", ")")
            return node
        return self.compare()

    def operand(self):
        tok = self.peek()
        if tok is None:
            self.fail("expected a column or a value, got end of text")
        kind, value = tok
        self.i += 1
        if kind == "name":
            self.columns.append(value)
            return Column(value)
        if kind in ("num", "str"):
            return value
        if tok in (("kw", "true"), ("kw", "false")):
            return value == "true"
        self.fail(f"expected a column or a value, got {value!r}")

    def compare(self):
        left = self.operand()
        if isinstance(left, Column) and self.accept("kw", "is"):
            negate = self.accept("kw", "not")
            self.take("kw", "null")
            return ("not_null" if negate else "is_null", left)
        if isinstance(left, Column) and (self.peek() in (("kw", "in"), ("kw", "not"))):
            negate = self.accept("kw", "not")
            self.take("kw", "in")
            self.take("punct", "(")
            values = [self.literal()]
            while self.accept("punct", ","):
                values.append(self.literal())
            self.take("punct", ")")
            return ("not_in" if negate else "in", left, tuple(values))
        tok = self.peek()
        if tok is None or tok[0] != "op":
            if isinstance(left, bool):  # a bare true / false
                return ("const", left)
            self.fail(f"expected a comparison after {left.name if isinstance(left, Column) else left!r}")
        self.i += 1
        return ("cmp", tok[1], left, self.operand())

    def literal(self):
        value = self.operand()
        if isinstance(value, Column):
            self.columns.pop()
            self.fail(f"expected a value in the 'in' list, got column {value.name!r}")
        return value


def _value(node, table: pa.Table):
    return table[node.name] if isinstance(node, Column) else pa.scalar(node)


def _evaluate(node: tuple, table: pa.Table):
    op = node[0]
    if op == "or":
        return pc.or_kleene(_evaluate(node[1], table), _evaluate(node[2], table))
    if op == "and":
        return pc.and_kleene(_evaluate(node[1], table), _evaluate(node[2], table))
    if op == "not":
        return pc.invert(_evaluate(node[1], table))
    if op == "const":
        return pa.scalar(node[1])
    if op in ("is_null", "not_null"):
        nulls = pc.is_null(table[node[1].name])
        return nulls if op == "is_null" else pc.invert(nulls)
    if op in ("in", "not_in"):
        col = table[node[1].name]
        try:
            found = pc.is_in(col, value_set=pa.array(list(node[2])))
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise WinnowError(f"where: cannot test {node[1].name} ({col.type}) in {list(node[2])}: "
                              f"{str(exc).splitlines()[0]}") from None
        found = pc.if_else(pc.is_null(col), pa.scalar(None, pa.bool_()), found)  # null in (...) is unknown
        return found if op == "in" else pc.invert(found)
    _, sym, left, right = node
    try:
        return _OPS[sym](_value(left, table), _value(right, table))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        names = [n.name for n in (left, right) if isinstance(n, Column)]
        types = [str(table[n].type) for n in names]
        show = [n.name if isinstance(n, Column) else repr(n) for n in (left, right)]
        raise WinnowError(f"where: cannot compare {show[0]} {sym} {show[1]} (column types: "
                          f"{', '.join(f'{n}: {t}' for n, t in zip(names, types))}): {str(exc).splitlines()[0]}"
                          ) from None
