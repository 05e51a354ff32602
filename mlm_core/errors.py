"""The project's exceptions: each message tells the user what to do next.

They subclass ``ValueError`` so that callers that only know the standard library still
catch them; pages show them with ``st.error`` and the CLI prints them on one line and
exits non-zero.
"""


class MaskLabError(ValueError):
    """Base class of every error caused by the user's input, model or file."""


class InputError(MaskLabError):
    """The text, positions or parameters cannot be used as given."""


class NothingToMaskError(InputError):
    """The input has no token that could be masked (empty text, or rules left nothing)."""


class ModelLoadError(MaskLabError):
    """A model cannot be loaded safely or is not a masked language model."""


class CorpusError(InputError):
    """The corpus file cannot be used; the message names the line or the limit."""


class MemoryLimitError(InputError):
    """A run needs (or needed) more memory than the machine has; the message names a batch size that fits."""


class RunError(MaskLabError):
    """A run operation that cannot be done (unknown id, forbidden transition)."""


class RunIndexRebuilt(RunError):
    """The run index was found damaged during an operation and rebuilt from the run folders: try again."""


class EvaluationCancelled(MaskLabError):
    """The caller's cancel flag was raised; nothing was cached."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


class Cancelled(RuntimeError):
    """The user asked the run to stop (``step``: the last completed step)."""

    def __init__(self, step: int):
        super().__init__(f"cancelled at step {step}")
        self.step = step
