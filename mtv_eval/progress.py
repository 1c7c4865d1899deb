"""Progress that reads well anywhere: bars on a terminal, one short line per stage elsewhere.

In a log file or CI (stderr is not a terminal, or `CI` is set) a redrawn progress bar
becomes one line of thousands of characters, so mtv-eval's commands turn every tqdm bar
off there (tqdm reads `TQDM_DISABLE`; transformers and datasets have their own switches)
and report each stage with `stage()`: one line, flushed. Library warnings a user cannot act
on (deprecations inside transformers or lmms-eval) are hidden unless `MTV_EVAL_VERBOSE=1`.
"""

from __future__ import annotations

import os
import sys
import warnings

VERBOSE_ENV = "MTV_EVAL_VERBOSE"


def interactive() -> bool:
    """True on a terminal outside CI, unless `TQDM_DISABLE` is set: progress bars are worth
    drawing. (Our bars pass `disable=` explicitly, which tqdm's own TQDM_DISABLE does not
    override, so it is honoured here; sweep workers set it, their parent draws the progress.)"""
    bars_off = os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes")
    return sys.stderr.isatty() and not os.environ.get("CI") and not bars_off


def stage(message: str) -> None:
    """One progress line for a stage of long work (MTV built, cell done, ...)."""
    print(f"[mtv-eval] {message}", file=sys.stderr, flush=True)


def configure_output() -> None:
    """Set up bars and warnings for a command-line run (call once, before heavy imports run)."""
    if not interactive():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ.get(VERBOSE_ENV, "") not in ("1", "true", "yes"):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    if not interactive():
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # transformers is a dependency; this only guards odd installs
            pass
