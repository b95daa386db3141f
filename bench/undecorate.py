"""Rewrite decorated functions as plain ones, so that mutmut mutates them (bench/mutation.sh).

mutmut 3 does not mutate a decorated function (nor one defined inside another function), and
every Typer command is one: ``@app.command()`` on a function at module level or inside a
``register(app)``. In the copy of the tree that bench/mutation.sh mutates, each such function
becomes a plain module-level function, decorated by a call after its definition::

    @app.command()                      def synth(...): ...
    def synth(...): ...          ->     synth = app.command()(synth)

    def register(app):                  def predict(...): ...
        @app.command(...)        ->     def register(app):
        def predict(...): ...               app.command(...)(predict)

Other functions decorated inside a function (a nested ``@contextmanager``) stay as they are.
Typer reads the same signature (mutmut's trampoline keeps it with ``functools.wraps``), so the
app is the same; only the copy is rewritten, never the checkout.

    python bench/undecorate.py FILE...     # rewrites the files in place
"""

from __future__ import annotations

import sys

import libcst as cst

KEPT = {"staticmethod", "classmethod"}  # mutmut mutates these itself


def _decorated(node: cst.CSTNode) -> bool:
    if not isinstance(node, cst.FunctionDef) or not node.decorators:
        return False
    names = [d.decorator for d in node.decorators]
    return not (len(names) == 1 and isinstance(names[0], cst.Name) and names[0].value in KEPT)


def _registered(node: cst.CSTNode) -> bool:
    """A function decorated by ``X.command(...)`` or ``X.callback(...)`` (a Typer command)."""
    if not _decorated(node) or len(node.decorators) != 1:
        return False
    call = node.decorators[0].decorator
    return (
        isinstance(call, cst.Call)
        and isinstance(call.func, cst.Attribute)
        and call.func.attr.value in ("command", "callback")
    )


def _applied(function: cst.FunctionDef) -> cst.BaseExpression:
    """``d1(d2(name))`` for ``@d1 @d2 def name``: decorators apply from the bottom up."""
    value: cst.BaseExpression = cst.Name(function.name.value)
    for decorator in reversed(function.decorators):
        value = cst.Call(func=decorator.decorator, args=[cst.Arg(value)])
    return value


def undecorate(source: str) -> str:
    module = cst.parse_module(source)
    body: list[cst.CSTNode] = []
    for statement in module.body:
        if _decorated(statement):  # a module-level decorated function
            plain = statement.with_changes(decorators=[])
            name = cst.Name(statement.name.value)
            assign = cst.Assign(targets=[cst.AssignTarget(name)], value=_applied(statement))
            body += [plain, cst.SimpleStatementLine([assign])]
        elif isinstance(statement, cst.FunctionDef) and any(
            _registered(inner) for inner in statement.body.body
        ):  # register(app): its commands move out, registered by calls
            inner_body = []
            for inner in statement.body.body:
                if _registered(inner):
                    body.append(inner.with_changes(decorators=[]))
                    inner_body.append(cst.SimpleStatementLine([cst.Expr(_applied(inner))]))
                else:
                    inner_body.append(inner)
            body.append(statement.with_changes(body=statement.body.with_changes(body=inner_body)))
        else:
            body.append(statement)
    return module.with_changes(body=body).code


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        with open(path, "w", encoding="utf-8") as file:
            file.write(undecorate(text))
