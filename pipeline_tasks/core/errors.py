"""Domain errors, raised at the boundary. Each message names the problem and the fix.

The stage CLI prints these without a traceback and exits non-zero (2; 3 for bad data, 75 for a
service that blinked): they are expected failures an operator acts on, not bugs.
"""

from __future__ import annotations


class RecpipeError(Exception):
    """Base class: an expected failure with a message for a human."""

    exit_code = 2


class ParamsError(RecpipeError):
    """params.yaml or an override is wrong (unknown key, wrong type, bad value)."""


class DataSourceError(RecpipeError):
    """An input file or folder cannot be read as the declared source."""


class DataValidationError(RecpipeError):
    """A Great Expectations gate failed; the data must be fixed before training."""

    exit_code = 3


class PipelineError(RecpipeError):
    """A stage's inputs are missing or inconsistent (run the earlier stage first)."""


class TransientError(RecpipeError):
    """A service the run depends on blinked (a locked database, an HTTP 5xx, a timeout): nothing is wrong
    with the inputs, and the same run can succeed later. Airflow retries it (exit code 75, EX_TEMPFAIL)."""

    exit_code = 75
