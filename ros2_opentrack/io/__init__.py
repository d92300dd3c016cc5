"""Scene readers (ScanNet export folder, 7-Scenes folder, ROS 2 bags) and output writers.

Every reader yields ``Frame`` objects as read (the pipeline's entry validates them, once) and counts what it had
to skip; ``open_scene`` picks the reader that claims the path."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

from ..errors import InputError
from ..types import Frame


class SceneReader(Protocol):
    name: str
    dropped: dict  # reason -> count of frames skipped (missing file, unreadable image, bad pose, ...)

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Frame]: ...


# Every reader, in the order they are tried; each class answers ``claims(path)``. A new dataset format is its
# own module with a reader class (``__len__``, ``__iter__`` -> Frame, ``dropped``, ``claims``) and one line here.
READERS = (
    "ros2_opentrack.io.rosbag:RosbagReader",
    "ros2_opentrack.io.scannet:ScanNetReader",
    "ros2_opentrack.io.sevenscenes:SevenScenesReader",
)


def open_scene(path, stride: int = 1, max_frames: int | None = None, with_masks: bool = False, **kwargs) -> SceneReader:
    """Open a ScanNet export folder, a 7-Scenes folder or a ROS 2 bag (.mcap, .db3, or a bag folder): the first
    reader of READERS that claims the path.

    ``with_masks`` attaches the dataset's masks (ScanNet instance/<i>.png, a bag's label image topic) to each
    frame; a scene that has none fails here, once (InputError naming the scene), not frame by frame."""
    import importlib

    path = Path(path)
    if not path.exists():
        raise InputError(f"scene '{path}' does not exist")
    for target in READERS:
        module, name = target.split(":")
        reader = getattr(importlib.import_module(module), name)
        if reader.claims(path):
            return reader(path, stride=stride, max_frames=max_frames, with_masks=with_masks, **kwargs)
    raise InputError(
        f"'{path}' is not a scene: expected a ScanNet export folder (color/ depth/ pose/ intrinsic/), "
        f"a 7-Scenes folder (frame-XXXXXX.color.jpg|depth.png|pose.txt) or a ROS 2 bag (.mcap/.db3)"
    )
