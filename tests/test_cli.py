"""run_script: user errors become one line and exit status 2, debug mode and bugs keep their tracebacks."""

import pytest

from distilbert_eqx.cli import DEBUG_ENV, run_script
from distilbert_eqx.errors import UserError


class _BadValue(UserError):
    pass


def _fail_with(error: BaseException):
    def main(argv: list[str]) -> None:
        raise error

    return main


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def test_user_error_is_one_line_and_status_2(capsys):
    status = run_script(_fail_with(_BadValue("batch_size must be positive, got 0")), ["--lr", "1e-3"])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err == "error: batch_size must be positive, got 0\n"
    assert "Traceback" not in captured.err + captured.out


def test_debug_flag_reraises(capsys):
    with pytest.raises(_BadValue, match="bad"):
        run_script(_fail_with(_BadValue("bad")), ["--debug"])
    assert capsys.readouterr().err == ""


def test_debug_env_reraises(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(_BadValue):
        run_script(_fail_with(_BadValue("bad")), [])


def test_debug_env_zero_means_off(monkeypatch, capsys):
    monkeypatch.setenv(DEBUG_ENV, "0")
    assert run_script(_fail_with(_BadValue("bad")), []) == 2
    assert capsys.readouterr().err == "error: bad\n"


def test_bug_propagates(capsys):
    with pytest.raises(KeyError):
        run_script(_fail_with(KeyError("oops")), [])
    assert capsys.readouterr().err == ""


def test_keyboard_interrupt_is_status_130(capsys):
    assert run_script(_fail_with(KeyboardInterrupt()), []) == 130
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lr", "1e-3", "config.yaml"], ["--lr", "1e-3", "config.yaml"]),
        (["a", "--debug", "b"], ["a", "b"]),
        ([], []),
    ],
)
def test_argv_reaches_main_without_debug_flag(argv, expected):
    seen = []
    original = list(argv)
    assert run_script(seen.append, argv) == 0
    assert seen == [expected]
    assert argv == original


def test_default_argv_is_sys_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["script.py", "x", "--debug"])
    seen = []
    assert run_script(seen.append) == 0
    assert seen == [["x"]]
