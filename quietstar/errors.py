"""The one base class of errors in what a user asked for."""


class UserError(Exception):
    """A problem with the user's input (a config value, a path, a data file, a checkpoint, the output directory):
    the message is one line that names the field or file. The command-line tools print it without a traceback and
    exit with status 2; every other exception is a bug and keeps its traceback."""
