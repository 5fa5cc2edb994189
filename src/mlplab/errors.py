"""Errors a user can fix: bad config values, missing or broken data files, unusable checkpoints.

The entry points print these as one line (what is wrong and what is allowed) and exit non-zero;
anything else is a bug and keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows the traceback for these too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

log = logging.getLogger("mlplab")
FULL_ERROR = "HYDRA_FULL_ERROR"
RAISED_FOR_CLI = "MLPLAB_HYDRA_ERRORS_RAISED"  # FULL_ERROR was set by hydra_errors_raised, not by the user
T = TypeVar("T")


class UserError(Exception):
    """Something in the user's input, explained in the message."""


class ConfigError(UserError, ValueError):
    """A config value out of range or of an unknown name."""


class DataError(UserError, RuntimeError):
    """Data files missing, truncated or malformed."""


class TrainingDiverged(UserError):
    """The training loss became inf or NaN, or far worse than guessing."""


def user_error_in(err: BaseException) -> UserError | None:
    """The UserError behind ``err``, if any: Hydra's ``instantiate`` wraps what a constructor raises."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__
    return None


def one_line(err: BaseException) -> str:
    """What went wrong, on one line: a UserError's own message, else the exception's type and message."""
    return " ".join(str(user_error_in(err) or f"{type(err).__name__}: {err}").split())


def reported_as_one_line(task: Callable[..., T]) -> Callable[..., T]:
    """Wrap an entry point so a UserError ends the run with one clear line and exit status 1."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs) -> T:
        try:
            return task(*args, **kwargs)
        except Exception as err:
            user_error = user_error_in(err)
            if user_error is None or wants_traceback():
                raise
            exit_with(user_error)

    return wrapper


def wants_traceback() -> bool:
    """``HYDRA_FULL_ERROR=1`` set by the user, who asks for tracebacks of their own mistakes too."""
    return os.environ.get(FULL_ERROR) == "1" and RAISED_FOR_CLI not in os.environ


def exit_with(error: UserError) -> NoReturn:
    """Print ``error: <message>`` (one line) and exit with status 1; ``HYDRA_FULL_ERROR=1`` raises it instead."""
    if wants_traceback():
        raise error
    log.error("error: %s", error)
    sys.exit(1)


@contextlib.contextmanager
def hydra_errors_raised() -> Iterator[None]:
    """Let Hydra's own exceptions (an option that does not exist, a key not in the config) reach the caller instead
    of Hydra's paragraph, through the switch Hydra documents for it, ``HYDRA_FULL_ERROR=1``, marked as set by mlplab
    so that :func:`wants_traceback` (here, in the task and in the processes it starts) still answers for the user."""
    saved = {key: os.environ.get(key) for key in (FULL_ERROR, RAISED_FOR_CLI)}
    if not wants_traceback():
        os.environ |= {FULL_ERROR: "1", RAISED_FOR_CLI: "1"}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
