"""Progress bars that keep redirected logs readable, and elapsed times.

A bar is drawn on stderr only when stderr is a terminal: ``rcnn train ... > train.log 2>&1``
then holds the per-epoch report lines, each at the start of a line, and no bar updates.
"""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(iterable=None, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, shown when ``enabled`` and stderr is a terminal."""
    # tqdm's disable=None means: disabled when the stream is not a terminal.
    return tqdm(iterable, disable=None if enabled else True, dynamic_ncols=True, **kwargs)


def minutes_seconds(seconds: float) -> str:
    """``2m 5s``: whole seconds, rounded before splitting so that 119.6 s reads 2m 0s."""
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m {seconds}s"
