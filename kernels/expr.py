"""Integer expressions shared by Python launchers and generated C.

A kernel's launch description (grid, threads, shared memory, workspace sizes) is written once as
small expressions such as ``"cdiv(rows, ROWS)"``. Python evaluates them at launch; the plugin
generator emits them as C. Only a closed grammar is accepted — names, non-negative integer
literals, ``+ - * // %``, and the calls ``cdiv``, ``min``, ``max`` — so nothing else can reach
generated source.
"""
from __future__ import annotations

import ast
import functools
from collections.abc import Mapping

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "/", ast.Mod: "%"}
_CALLS = {"cdiv": 2, "min": 2, "max": 2}


class ExprError(ValueError):
    """An expression outside the grammar, or a name without a value."""


@functools.lru_cache(maxsize=None)
def parse(text: str) -> ast.expr:
    """Parse and validate ``text``; raise ExprError for anything outside the grammar."""
    try:
        tree = ast.parse(str(text), mode="eval").body
    except SyntaxError as exc:
        raise ExprError(f"not an expression: {text!r}") from exc
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            if type(node.value) is not int or node.value < 0:
                raise ExprError(f"only non-negative integer literals allowed in {text!r}")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise ExprError(f"operator {type(node.op).__name__} not allowed in {text!r}")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or _CALLS.get(node.func.id) != len(node.args) \
                    or node.keywords:
                raise ExprError(f"only cdiv/min/max with two arguments allowed in {text!r}")
        elif isinstance(node, ast.Name):
            if not node.id.isidentifier() or node.id.startswith("_"):
                raise ExprError(f"bad name {node.id!r} in {text!r}")
        elif not isinstance(node, (ast.operator, ast.Load)):
            raise ExprError(f"{type(node).__name__} not allowed in {text!r}")
    return tree


def names(text: str) -> set[str]:
    """The free names of an expression (call names excluded)."""
    tree = parse(text)
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in calls}


def evaluate(text: str | int, env: Mapping[str, int]) -> int:
    """Evaluate with integer semantics; every name must be bound in ``env``."""
    if isinstance(text, int):
        return text

    def ev(node: ast.expr) -> int:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in env:
                raise ExprError(f"{node.id!r} has no value (expression {text!r})")
            return int(env[node.id])
        if isinstance(node, ast.Call):
            a, b = (ev(arg) for arg in node.args)
            return {"cdiv": lambda: -(-a // b), "min": lambda: min(a, b),
                    "max": lambda: max(a, b)}[node.func.id]()
        a, b = ev(node.left), ev(node.right)
        op = type(node.op)
        if op is ast.Add:
            return a + b
        if op is ast.Sub:
            return a - b
        if op is ast.Mult:
            return a * b
        if b == 0:
            raise ExprError(f"division by zero in {text!r}")
        return a // b if op is ast.FloorDiv else a % b

    return ev(parse(text))


def to_c(text: str | int, rename: Mapping[str, str] | None = None) -> str:
    """Emit the expression as C over int64_t; ``rename`` maps names to C identifiers or literals."""
    if isinstance(text, int):
        return f"INT64_C({text})"
    rename = rename or {}

    def em(node: ast.expr) -> str:
        if isinstance(node, ast.Constant):
            return f"INT64_C({node.value})"
        if isinstance(node, ast.Name):
            return f"((int64_t)({rename.get(node.id, node.id)}))"
        if isinstance(node, ast.Call):
            a, b = (em(arg) for arg in node.args)
            return {"cdiv": f"CT_CDIV({a}, {b})", "min": f"CT_MIN({a}, {b})",
                    "max": f"CT_MAX({a}, {b})"}[node.func.id]
        return f"({em(node.left)} {_BINOPS[type(node.op)]} {em(node.right)})"

    return em(parse(text))
