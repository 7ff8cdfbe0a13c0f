"""The one base class of errors in what a user asked for, and how the command-line tools report them."""

import contextlib
import sys
from collections.abc import Iterator, Mapping

# The exit status of a command that stopped on a `UserError` (argparse's status for a bad command line).
USER_ERROR_EXIT_STATUS = 2


class UserError(ValueError):
    """A problem with the user's input (a config value, a path, a data file, a checkpoint, the output directory):
    the message is one line that names the field or file. The command-line tools report it with
    `report_user_errors`; every other exception is a bug and keeps its traceback."""


@contextlib.contextmanager
def report_user_errors(
    prog: str, *, hints: Mapping[type[UserError], str] | None = None, quiet: bool = False
) -> Iterator[None]:
    """End the command `prog` on a `UserError` raised in the block: print `<prog>: error: <message>` (plus `; <hint>`
    for the first class of `hints` the error is an instance of) to stderr, without a traceback, and exit with
    `USER_ERROR_EXIT_STATUS`. `quiet` exits without printing (the other ranks of a torchrun job, which find the
    same error as rank 0). Any other exception passes through.

        with report_user_errors("python -m quietstar.eval", hints={NotQuietStarCheckpointError: "use --modes base"}):
            evaluate(args)
    """
    try:
        yield
    except UserError as error:
        if not quiet:
            hint = next((text for kind, text in (hints or {}).items() if isinstance(error, kind)), None)
            print(f"{prog}: error: {error}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_STATUS) from None
