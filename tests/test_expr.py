import pytest

from kernels import expr


@pytest.mark.parametrize("text, env, value", [
    ("cdiv(rows, ROWS)", {"rows": 37, "ROWS": 4}, 10),
    ("ROWS * WARPS * 32", {"ROWS": 2, "WARPS": 4}, 256),
    ("min(a, 7) + max(b, 2) % 3", {"a": 9, "b": 5}, 9),
    ("(n - 1) // 2", {"n": 31}, 15),
    ("1", {}, 1),
])
def test_evaluate(text, env, value):
    assert expr.evaluate(text, env) == value


@pytest.mark.parametrize("text", [
    "__import__('os')", "a.b", "a[0]", "a ** 2", "-a", "1.5", "f(a)", "cdiv(a)", "a if b else c",
    "a; b", "lambda: 1", "'x'", "a < b", "min(a, b, c)", "cdiv(a, b=1)",
])
def test_rejects_anything_outside_the_grammar(text):
    with pytest.raises(expr.ExprError):
        expr.parse(text)


def test_unbound_name_and_division_by_zero_are_clear():
    with pytest.raises(expr.ExprError, match="'rows' has no value"):
        expr.evaluate("rows + 1", {})
    with pytest.raises(expr.ExprError, match="division by zero"):
        expr.evaluate("a // b", {"a": 1, "b": 0})


def test_c_emission_matches_python():
    text = "cdiv(rows, R) * min(W, 3) + (rows % 5) // 2"
    c = expr.to_c(text, {"rows": "shape_rows"})
    assert "shape_rows" in c and "CT_CDIV" in c and "CT_MIN" in c and "//" not in c
    assert expr.names(text) == {"rows", "R", "W"}
