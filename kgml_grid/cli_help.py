"""How ``kgml-grid ... --help`` shows options: every option's help text with its default.

:func:`show_defaults` sets :class:`HelpFormatter` on a parser and every sub-command
parser under it, so that each command module declares its options plainly and the
defaults are shown the same way everywhere ("(default: 2)"). Options whose default is
"absent" (``None``), flags (``False``) and repeatable options (``[]``) say in their own
help what happens when they are not given.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

__all__ = ["HelpFormatter", "iter_parsers", "show_defaults"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps hand-formatted descriptions and epilogs; appends "(default: X)" to an
    option's help when it has a real default and the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, [], argparse.SUPPRESS)
                or "%(default)" in text or "default" in text.lower()):  # fmt: skip
            return text
        return f"{text} (default: %(default)s)"


def iter_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                 ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:  # fmt: skip
    """Every parser under ``parser`` with its command path (``('ingest', 'soil')``)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from iter_parsers(sub, (*path, name))


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give ``parser`` and all its sub-command parsers the :class:`HelpFormatter`."""
    for _, p in iter_parsers(parser):
        p.formatter_class = HelpFormatter
    return parser
