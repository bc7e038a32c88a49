"""Errors that tasks raise.

A `DataError` means "this input is bad": the item is recorded as a failure with the
message as its reason and the run goes on. Any other exception a clip processor raises on a
clip is a bug that clip's content triggers (`ProcessorCrash`): its video becomes one failure row
and the unit's other videos are kept. Infrastructure errors (I/O, memory, Ray:
`is_infrastructure`) and configuration errors propagate, so that Ray's retries apply.
"""


class DataError(Exception):
    """A problem with one input item; the message is shown to people as the failure reason."""


def failure_kind(failed_in: str, reason: str) -> str:
    """`failed_in: reason` without per-file details (after a colon or parenthesis), for tallies by reason;
    `failed_in` is where the row failed: "unit", "read", "probe", "decode" or a clip processor's name."""
    return f"{failed_in}: {reason.split(':')[0].split('(')[0].strip()}"


def failure_reason(error: Exception) -> str:
    """The reason recorded for a failure: the message, or the error's type when it has none."""
    return str(error).strip() or f"{type(error).__name__} (raised without a message)"


class ProcessorCrash(Exception):
    """A clip processor raised something other than `DataError` on one clip: a bug its content triggers. The
    clip's video becomes a failure row naming the error; the unit's other videos are kept."""

    def __init__(self, processor: str, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {failure_reason(error)}"[:500])
        self.processor = processor


def is_infrastructure(error: Exception) -> bool:
    """The machine, not the clip, is in trouble (I/O, memory, a Ray failure that outlived its retries): the unit
    fails, so that Ray retries it, rather than every video after it becoming a failure row."""
    return isinstance(error, OSError | MemoryError) or type(error).__module__.split(".")[0] == "ray"
