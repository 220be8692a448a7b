"""The mutation operators of ``make mutation`` (see :mod:`tools.mutation`).

A mutant is one small fault at one site of a module, found on its ``ast`` and
applied as a splice of the source text, so everything else in the file (comments,
layout, line numbers) stays as it was and the mutated line can be shown next to
the original. Its id, ``module:line:column:operator`` (line from 1, column from 0
in characters, at the operator token where there is one), stays the same as long
as the code before it on that line and the lines above it do not move.

Operators: ``flip-<op>`` (``<``/``>=``, ``<=``/``>``, ``==``/``!=``, ``is``/``is
not``, ``in``/``not in``), ``int-plus`` and ``int-minus`` (an integer constant +1
or -1), ``flip-true``/``flip-false``, ``and-to-or``/``or-to-and``, ``drop-not``
(``not x`` becomes ``x``), ``add-to-sub``/``sub-to-add``, and ``del-<kind>`` (a call
statement, an assignment, an augmented assignment, a ``return`` with a value or a
``raise`` becomes ``pass``). Never mutated: docstrings, logging calls
(``log.*``), f-strings (messages), annotations, ``if TYPE_CHECKING:`` blocks and
``__repr__``.
"""

from __future__ import annotations

import ast
import bisect
import io
import tokenize
from dataclasses import dataclass

COMPARE_TEXT = {ast.Lt: "<", ast.GtE: ">=", ast.LtE: "<=", ast.Gt: ">", ast.Eq: "==", ast.NotEq: "!=",
                ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}
COMPARE_NAME = {ast.Lt: "lt", ast.GtE: "gte", ast.LtE: "lte", ast.Gt: "gt", ast.Eq: "eq", ast.NotEq: "ne",
                ast.Is: "is", ast.IsNot: "isnot", ast.In: "in", ast.NotIn: "notin"}
FLIP = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.LtE: ast.Gt, ast.Gt: ast.LtE, ast.Eq: ast.NotEq,
        ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
COMPARE_TOKENS = {"<", ">=", "<=", ">", "==", "!=", "is", "not", "in"}
LOGGERS = {"log", "logger", "logging"}
DELETED = {ast.Assign: "assign", ast.AugAssign: "augassign", ast.Return: "return", ast.Raise: "raise"}


@dataclass(frozen=True)
class Mutant:
    id: str
    module: str
    line: int
    op: str
    edits: tuple[tuple[int, int, str], ...]  # (start, end, replacement), character offsets into the source

    def apply(self, text: str) -> str:
        for start, end, new in sorted(self.edits, reverse=True):
            text = text[:start] + new + text[end:]
        return text


class Source:
    """A module's text with the offset arithmetic that ast and tokenize positions need."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.split("\n")
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line) + 1)
        self.tokens = [(self.starts[t.start[0] - 1] + t.start[1], self.starts[t.end[0] - 1] + t.end[1], t.string)
                       for t in tokenize.generate_tokens(io.StringIO(text).readline)
                       if t.type in (tokenize.OP, tokenize.NAME, tokenize.NUMBER, tokenize.STRING)]
        self.token_starts = [t[0] for t in self.tokens]

    def start(self, node: ast.AST) -> int:
        return self._offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]

    def end(self, node: ast.AST) -> int:
        return self._offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]

    def _offset(self, lineno: int, col_bytes: int) -> int:
        # ast counts columns in UTF-8 bytes, tokenize and str slicing in characters.
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode()[:col_bytes].decode(errors="ignore"))

    def position(self, offset: int) -> tuple[int, int]:
        row = bisect.bisect_right(self.starts, offset) - 1
        return row + 1, offset - self.starts[row]

    def tokens_between(self, start: int, end: int, wanted: set[str]) -> list[tuple[int, int, str]]:
        found = []
        for i in range(bisect.bisect_left(self.token_starts, start), len(self.tokens)):
            token = self.tokens[i]
            if token[1] > end:
                break
            if token[2] in wanted:
                found.append(token)
        return found

    def token_after(self, offset: int) -> int:
        i = bisect.bisect_right(self.token_starts, offset)
        return self.tokens[i][0] if i < len(self.tokens) else len(self.text)


def _is_log_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id in LOGGERS)


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


class _Collector(ast.NodeVisitor):
    def __init__(self, src: Source) -> None:
        self.src = src
        self.found: list[tuple[int, str, tuple[tuple[int, int, str], ...]]] = []  # (offset, op, edits)

    def add(self, offset: int, op: str, *edits: tuple[int, int, str]) -> None:
        self.found.append((offset, op, edits))

    # -- what is never mutated ---------------------------------------------------

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if node.name == "__repr__":
            return
        for expr in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            if expr is not None:
                self.visit(expr)
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_arg(self, node: ast.arg) -> None:
        pass

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        pass

    def visit_Call(self, node: ast.Call) -> None:
        if not _is_log_call(node):
            self.generic_visit(node)

    # -- statements --------------------------------------------------------------

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a docstring, or a string standing alone: nothing runs
        if isinstance(node.value, ast.Call) and not _is_log_call(node.value):
            self._delete(node, "call")
        self.generic_visit(node)

    def visit_stmt(self, node: ast.stmt) -> None:
        if not isinstance(node, ast.Return) or node.value is not None:
            self._delete(node, DELETED[type(node)])
        self.generic_visit(node)

    visit_Assign = visit_AugAssign = visit_Return = visit_Raise = visit_stmt

    def _delete(self, node: ast.stmt, kind: str) -> None:
        start, end = self.src.start(node), self.src.end(node)
        newline = self.src.text.find("\n", end)
        rest = self.src.text[end:newline if newline >= 0 else None]
        lines = node.end_lineno - node.lineno  # type: ignore[operator]
        # Blank lines in place of a multi-line statement keep the line numbers below it,
        # unless more code follows on its last line (``; x = 1``).
        filler = "\n" * lines if not rest.strip() or rest.strip().startswith("#") else ""
        self.add(start, f"del-{kind}", (start, end, "pass" + filler))

    # -- expressions -------------------------------------------------------------

    def visit_Compare(self, node: ast.Compare) -> None:
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            tokens = self.src.tokens_between(self.src.end(left), self.src.start(right), COMPARE_TOKENS)
            if tokens:
                start, end = tokens[0][0], tokens[-1][1]
                self.add(start, f"flip-{COMPARE_NAME[type(op)]}", (start, end, COMPARE_TEXT[FLIP[type(op)]]))
            left = right
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Add | ast.Sub):
            old, new = ("+", "-") if isinstance(node.op, ast.Add) else ("-", "+")
            tokens = self.src.tokens_between(self.src.end(node.left), self.src.start(node.right), {old})
            if tokens:
                start, end, _ = tokens[0]
                self.add(start, "add-to-sub" if old == "+" else "sub-to-add", (start, end, new))
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        edits = []
        for left, right in zip(node.values, node.values[1:]):
            edits += [(s, e, new) for s, e, _ in self.src.tokens_between(self.src.end(left), self.src.start(right),
                                                                         {old})]
        if edits:
            self.add(edits[0][0], f"{old}-to-{new}", *edits)
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            start = self.src.start(node)
            self.add(start, "drop-not", (start, self.src.token_after(start), ""))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        start, end = self.src.start(node), self.src.end(node)
        if type(node.value) is bool:
            self.add(start, f"flip-{str(node.value).lower()}", (start, end, str(not node.value)))
        elif type(node.value) is int:
            self.add(start, "int-plus", (start, end, repr(node.value + 1)))
            self.add(start, "int-minus", (start, end, repr(node.value - 1)))


def mutants(module: str, text: str) -> list[Mutant]:
    """Every mutant of one module's source, in source order; ``module`` is the path used in ids."""
    src = Source(text)
    collector = _Collector(src)
    collector.visit(ast.parse(text))
    found: list[Mutant] = []
    seen: dict[str, int] = {}
    for offset, op, edits in sorted(collector.found, key=lambda f: (f[0], f[1])):
        line, col = src.position(offset)
        mutant = Mutant(f"{module}:{line}:{col}:{op}", module, line, op, edits)
        if "\n" in edits[0][2] and not is_valid(mutant.apply(text)):
            # The blank-line filler did not fit: the statement collapses onto one line.
            mutant = Mutant(mutant.id, module, line, op, ((edits[0][0], edits[0][1], "pass"),))
        count = seen[mutant.id] = seen.get(mutant.id, 0) + 1
        if count > 1:
            mutant = Mutant(f"{mutant.id}#{count}", module, line, op, mutant.edits)
        found.append(mutant)
    return found


def is_valid(mutated: str, original: str | None = None) -> bool:
    """Whether ``mutated`` parses (and, given ``original``, means something else than it)."""
    try:
        tree = ast.parse(mutated)
    except SyntaxError:
        return False
    return original is None or ast.dump(tree) != ast.dump(ast.parse(original))


def show(mutant: Mutant, text: str) -> tuple[str, str]:
    """The original and the mutated source of the lines the mutant touches, each on one line."""
    first = min(text.count("\n", 0, s) for s, _, _ in mutant.edits)
    last = max(text.count("\n", 0, e) for _, e, _ in mutant.edits)
    mutated = mutant.apply(text)
    shift = mutated.count("\n") - text.count("\n")

    def joined(lines: list[str]) -> str:
        line = " ".join(part.strip() for part in lines if part.strip())
        return line if len(line) <= 160 else line[:157] + "..."

    return joined(text.split("\n")[first:last + 1]), joined(mutated.split("\n")[first:last + 1 + shift])
