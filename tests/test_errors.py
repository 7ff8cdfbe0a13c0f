"""`report_user_errors`: the one way the command-line tools end on a `UserError`."""

import pytest

from quietstar.checkpoint_files import CheckpointError
from quietstar.errors import USER_ERROR_EXIT_STATUS, UserError, report_user_errors
from quietstar.eval.checkpoint import NotQuietStarCheckpointError


def test_a_user_error_is_one_line_on_stderr_and_exit_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        with report_user_errors("prog"):
            raise CheckpointError("/x/model.safetensors is truncated")
    assert exit_info.value.code == USER_ERROR_EXIT_STATUS == 2
    assert exit_info.value.__context__ is None or exit_info.value.__suppress_context__  # no chained traceback
    assert capsys.readouterr() == ("", "prog: error: /x/model.safetensors is truncated\n")


def test_the_hint_of_the_first_matching_class_is_appended(capsys):
    hints = {NotQuietStarCheckpointError: "use --modes base", CheckpointError: "check the directory"}
    for error, line in (
        (NotQuietStarCheckpointError("/x is not a quietstar checkpoint"), "/x is not a quietstar checkpoint; use --modes base"),
        (CheckpointError("/x is truncated"), "/x is truncated; check the directory"),
        (UserError("bad value"), "bad value"),
    ):
        with pytest.raises(SystemExit):
            with report_user_errors("prog", hints=hints):
                raise error
        assert capsys.readouterr().err == f"prog: error: {line}\n"


def test_quiet_exits_without_a_line_and_other_errors_pass_through(capsys):
    with pytest.raises(SystemExit) as exit_info:
        with report_user_errors("prog", quiet=True):
            raise UserError("bad value")
    assert exit_info.value.code == 2 and capsys.readouterr() == ("", "")
    with pytest.raises(KeyError):  # a bug keeps its traceback
        with report_user_errors("prog"):
            raise KeyError("x")
