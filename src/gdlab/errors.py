"""The one exception type for user mistakes.

The entry point prints a GdlabError as a single line and exits non-zero; anything else is a
programming error and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator


class GdlabError(ValueError):
    """A mistake in the user's input: a bad config value, a missing device, a corrupt file."""


def causes(err: BaseException) -> Iterator[BaseException]:
    """`err`, then what it was raised from or while handling, and so on (each once): where a
    user's mistake or an OSError hides under the errors Hydra, torch or OmegaConf wrap it in."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__
