"""The config reference page (docs/config.md), generated from the dataclasses in pql_jax.config so
that it cannot drift: each field's key, type, default, kind (member / shape / host) and docstring,
and the options each env family takes (pql_jax.envs.families).

    python -m pql_jax.config_doc > docs/config.md

A test fails when the committed page differs from what this prints.
"""

from __future__ import annotations

import ast
import inspect
import typing
from dataclasses import MISSING, fields

from pql_jax import config
from pql_jax.envs.families import FAMILIES
from pql_jax.values import Options

KINDS = {config.MEMBER: "member: may differ between members of one compiled program",
         config.SHAPE: "shape: members that differ in it need separate programs",
         config.HOST: "host: read only by the host loop"}


def field_docs(cls) -> dict[str, str]:
    """{field name: its docstring} of a dataclass: the string literal right after each field
    (attribute docstrings live only in the source, so the source is parsed)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _type(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation)).replace("|", "\\|")


def reference_markdown() -> str:
    """The whole reference page."""
    lines = ["# Config reference", "",
             "Generated from `pql_jax/config.py` by `python -m pql_jax.config_doc > docs/config.md`; do not edit.",
             "Set a field in a YAML file under its section, or on the command line as `section.key=value`.",
             "Kinds: " + "; ".join(KINDS.values()) + ".", ""]
    for section, cls in config.SECTIONS.items():
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        lines += [f"## `{section}`", "", inspect.cleandoc(cls.__doc__ or ""), "",
                  "| key | type | default | kind | meaning |", "|---|---|---|---|---|"]
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()
            default = dict(default) if isinstance(default, Options) else default
            meaning = " ".join(docs.get(f.name, "").split()).replace("|", "\\|")
            lines.append(f"| `{section}.{f.name}` | {_type(hints[f.name])} | `{default!r}` | {f.metadata['kind']} "
                         f"| {meaning} |")
        lines.append("")
    return "\n".join(lines + _options_section())


def _options_section() -> list[str]:
    """The keys `env.options` takes, family by family (pql_jax.envs.families)."""
    lines = ["## `env.options` by family", "",
             "Each env family (the prefix of `env.name`) declares the options it takes; a key left out keeps the "
             "default below.", ""]
    for family, cls in FAMILIES.items():
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        lines += [f"### `{family}:`", ""]
        if not fields(cls):
            lines += ["No options.", ""]
            continue
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for f in fields(cls):
            meaning = " ".join(docs.get(f.name, "").split()).replace("|", "\\|")
            lines.append(f"| `env.options.{f.name}` | {_type(hints[f.name])} | `{f.default!r}` | {meaning} |")
        lines.append("")
    return lines


if __name__ == "__main__":
    print(reference_markdown())
