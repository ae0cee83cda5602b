"""Text to syntax tree: an LALR grammar run by lark, then checks of fields, values and limits."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import cast

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lark import PostLex

from fleetkeeper.devices.filters.language import (
    MAX_COMPARISONS,
    MAX_LENGTH,
    MAX_LIST_ITEMS,
    MAX_NESTING,
    And,
    Comparison,
    Expression,
    FilterError,
    Has,
    Not,
    Operator,
    Or,
    Value,
    check_field,
    field_kind,
    type_problem,
)

# Keywords must not swallow the start of a longer name (`order`, `inventory`, `notes`), hence the
# look-ahead; their priority makes `not` a keyword where a field could also start.
_GRAMMAR = r"""
start: expr
?expr: and_expr (_OR and_expr)*
?and_expr: unary (_AND unary)*
?unary: NOT unary -> negation
      | primary
?primary: comparison
        | membership
        | call
        | LPAR expr RPAR -> group
comparison: FIELD OPERATOR value
membership: FIELD NOT? IN list
call: FIELD LPAR FIELD RPAR
list: LSQB (value (COMMA value)*)? RSQB
?value: STRING | NUMBER | TRUE | FALSE

_OR.2: /or(?![A-Za-z0-9_.\-])/i
_AND.2: /and(?![A-Za-z0-9_.\-])/i
NOT.2: /not(?![A-Za-z0-9_.\-])/i
IN.2: /in(?![A-Za-z0-9_.\-])/i
TRUE.2: /true(?![A-Za-z0-9_.\-])/i
FALSE.2: /false(?![A-Za-z0-9_.\-])/i
// Empty parts are let through here so that the error can name the whole field.
FIELD: /[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]*)*/
OPERATOR: /==|!=|<=|>=|<|>|~/
STRING: /"([^"\\]|\\.)*"/s
NUMBER: /-?[0-9]+(\.[0-9]+)?(?![A-Za-z0-9_.])/
LPAR: "("
RPAR: ")"
LSQB: "["
RSQB: "]"
COMMA: ","
%ignore /[ \t\r\n]+/
"""


class _ReservedWords(PostLex):
    """Keywords are lexed as keywords everywhere, even where only a field could follow (the
    contextual lexer would otherwise read `or` in `a == "1" or or` as a field named "or")."""

    always_accept = ("_OR", "_AND", "NOT", "IN", "TRUE", "FALSE")

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        return stream


_PARSER = Lark(
    _GRAMMAR, parser="lalr", lexer="contextual", postlex=_ReservedWords(), maybe_placeholders=False
)

# What each terminal means to a person reading an error, in the order they are listed.
_EXPECTED_WORDS = {
    "FIELD": "a field",
    "NOT": "not",
    "LPAR": "'('",
    "OPERATOR": "an operator (== != < <= > >= ~)",
    "IN": "in",
    "STRING": "a string",
    "NUMBER": "a number",
    "TRUE": "true",
    "FALSE": "false",
    "LSQB": "'['",
    "COMMA": "','",
    "RSQB": "']'",
    "_AND": "and",
    "_OR": "or",
    "RPAR": "')'",
    "$END": "the end of the filter",
}
_PUNCTUATION = frozenset({"LSQB", "RSQB", "COMMA"})


def parse(expression: str) -> Expression:
    """Parses a filter and checks its fields, values and limits; raises FilterError."""
    _check_text(expression)
    try:
        tree = _PARSER.parse(expression)
    except UnexpectedInput as exc:
        raise _syntax_error(expression, exc) from None
    _check_bounds(tree)
    return _build(tree.children[0])


def _check_text(expression: str) -> None:
    if len(expression) > MAX_LENGTH:
        raise FilterError(
            f"the filter is longer than {MAX_LENGTH:,} characters (column {MAX_LENGTH + 1})", MAX_LENGTH + 1
        )
    if not expression.strip():
        raise FilterError("the filter is empty at column 1: expected a field, not or '('", 1)
    for index, character in enumerate(expression):
        # PostgreSQL text cannot hold NUL, and lone surrogates cannot be sent as UTF-8.
        if character == "\x00" or "\ud800" <= character <= "\udfff":
            raise FilterError(
                f"character U+{ord(character):04X} at column {index + 1} is not allowed", index + 1
            )


def _syntax_error(expression: str, exc: UnexpectedInput) -> FilterError:
    if isinstance(exc, UnexpectedCharacters):
        offset = exc.pos_in_stream or 0
        position = offset + 1
        if expression[offset] == '"':
            return FilterError(f'unterminated string at column {position}: expected a closing "', position)
        if re.match(r"-?[0-9]", expression[offset:]):
            return FilterError(f"bad number at column {position}: expected e.g. 5, -3 or 5.10", position)
        found = f"character {expression[offset]!r}"
        unquoted = expression[offset] == "'"
        expected = set(exc.allowed or ())
    elif isinstance(exc, UnexpectedToken):
        token = exc.token
        unquoted = token.type == "FIELD"
        if token.type == "$END":
            position = len(expression.rstrip()) + 1
            found = "end of the filter"
        else:
            position = (token.start_pos or 0) + 1
            found = f"string {token.value}" if token.type == "STRING" else repr(token.value)
        expected = set(exc.expected)
    else:  # pragma: no cover - LALR raises only the two above
        return FilterError(f"syntax error at column {exc.column}", int(exc.column))
    # A state's own list merges the follow sets of every rule that shares it (LALR); the interactive
    # parser tries each terminal and keeps those that really fit here.
    if exc.interactive_parser is not None:
        expected = set(exc.interactive_parser.accepts())  # type: ignore[no-untyped-call]
    words = [word for name, word in _EXPECTED_WORDS.items() if name in expected]
    if "OPERATOR" in expected:  # after a field, `not` and `(` only begin `not in` and `has(`
        words = [_EXPECTED_WORDS["OPERATOR"], "in", "not in"]
    wanted = ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)
    hint = " (strings are in double quotes)" if unquoted and "STRING" in expected else ""
    return FilterError(f"unexpected {found} at column {position}: expected {wanted}{hint}", position)


def _check_bounds(tree: Tree[Token]) -> None:
    """Nesting and size limits, walked without recursion (the tree is as deep as the input allows)
    and in reading order, so that the position named is the first one over the limit."""
    comparisons = 0
    stack: list[tuple[Tree[Token] | Token, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Token):
            continue
        if node.data in ("group", "negation"):
            depth += 1
            if depth > MAX_NESTING:
                position = _position(node)
                raise FilterError(
                    f"the filter nests deeper than {MAX_NESTING} levels at column {position}", position
                )
        elif node.data in ("comparison", "membership", "call"):
            comparisons += 1
            if comparisons > MAX_COMPARISONS:
                position = _position(node)
                raise FilterError(
                    f"the filter has more than {MAX_COMPARISONS} comparisons (the next one at column "
                    f"{position})",
                    position,
                )
        stack.extend((child, depth) for child in reversed(node.children))


def _position(node: Tree[Token] | Token) -> int:
    while isinstance(node, Tree):
        node = node.children[0]
    return (node.start_pos or 0) + 1


def _build(node: Tree[Token] | Token) -> Expression:
    """Syntax tree from lark's tree; recursive, which _check_bounds made safe."""
    assert isinstance(node, Tree)
    children = node.children
    if node.data == "expr":
        return Or(tuple(_build(child) for child in children))
    if node.data == "and_expr":
        return And(tuple(_build(child) for child in children))
    if node.data == "negation":
        return Not(_build(children[1]), _position(node))
    if node.data == "group":
        return _build(children[1])
    if node.data == "call":
        return _call(*cast(list[Token], children))
    if node.data == "comparison":
        name, operator, value = cast(list[Token], children)
        return _comparison(name, cast(Operator, operator.value), _value(value), value)
    if node.data == "membership":
        name = cast(Token, children[0])
        items = cast(Tree[Token], children[-1])
        return _comparison(name, "not in" if len(children) == 4 else "in", _list(items), items)
    raise AssertionError(f"unexpected node {node.data}")  # pragma: no cover


def _call(name: Token, _open: Token, argument: Token, _close: Token) -> Has:
    position = _position(name)
    if name.value.lower() != "has":
        raise FilterError(
            f"unknown function {name.value!r} at column {position}: expected has(path)", position
        )
    argument_position = _position(argument)
    check_field(argument.value, argument_position)
    if field_kind(argument.value) == "group":
        raise FilterError(
            f"has() at column {argument_position} takes an attribute or a column, not group",
            argument_position,
        )
    return Has(argument.value, position)


def _comparison(
    name: Token, operator: Operator, value: Value | tuple[Value, ...], value_at: Token | Tree[Token]
) -> Comparison:
    position = _position(name)
    check_field(name.value, position)
    comparison = Comparison(name.value, operator, value, position)
    problem = type_problem(comparison)
    if problem:
        value_position = _position(value_at)
        raise FilterError(f"{problem} (column {value_position})", value_position)
    return comparison


def _value(token: Token) -> Value:
    if token.type == "STRING":
        return _unquote(token)
    if token.type == "NUMBER":
        return float(token.value)
    return token.type == "TRUE"


def _unquote(token: Token) -> str:
    body = token.value[1:-1]
    for match in re.finditer(r"\\(.)", body, re.DOTALL):
        if match.group(1) not in ('"', "\\"):
            position = _position(token) + 1 + match.start()
            raise FilterError(
                f'unknown escape \\{match.group(1)} at column {position}: expected \\" or \\\\', position
            )
    return re.sub(r"\\(.)", r"\1", body, flags=re.DOTALL)


def _list(items: Tree[Token]) -> tuple[Value, ...]:
    values = [token for token in cast(list[Token], items.children) if token.type not in _PUNCTUATION]
    if len(values) > MAX_LIST_ITEMS:
        position = _position(values[MAX_LIST_ITEMS])
        raise FilterError(f"the list has more than {MAX_LIST_ITEMS} items (column {position})", position)
    return tuple(_value(token) for token in values)
