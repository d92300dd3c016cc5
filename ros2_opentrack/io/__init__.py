"""Scene readers (ScanNet export folder, 7-Scenes folder, ROS 2 bags) and output writers.

Every reader yields validated ``Frame`` objects and counts what it had to skip; ``open_scene`` picks the reader
from what the path is."""
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


def open_scene(path, stride: int = 1, max_frames: int | None = None, with_masks: bool = False, **kwargs) -> SceneReader:
    """Open a ScanNet export folder, a 7-Scenes folder or a ROS 2 bag (.mcap, .db3, or a bag folder).

    ``with_masks`` attaches the dataset's masks (ScanNet instance/<i>.png, a bag's label image topic) to each
    frame; a scene that has none fails here, once (InputError naming the scene), not frame by frame."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"scene '{path}' does not exist")
    if _is_bag(path):
        from .rosbag import RosbagReader

        return RosbagReader(path, stride=stride, max_frames=max_frames, with_masks=with_masks, **kwargs)
    if path.is_dir() and (path / "color").is_dir():
        from .scannet import ScanNetReader

        return ScanNetReader(path, stride=stride, max_frames=max_frames, with_masks=with_masks, **kwargs)
    if path.is_dir() and any(path.glob("frame-*.pose.txt")):
        from .sevenscenes import SevenScenesReader

        return SevenScenesReader(path, stride=stride, max_frames=max_frames, with_masks=with_masks, **kwargs)
    raise InputError(f"'{path}' is not a scene: expected a ScanNet export folder (color/ depth/ pose/ intrinsic/), "
                     f"a 7-Scenes folder (frame-XXXXXX.color.jpg|depth.png|pose.txt) or a ROS 2 bag (.mcap/.db3)")


_BAG_SUFFIXES = (".mcap", ".db3")


def _is_bag(path: Path) -> bool:
    """A bag file, a rosbag2 folder, or a folder a killed recorder left without metadata.yaml."""
    if path.is_file():
        return path.suffix.lower() in _BAG_SUFFIXES
    if (path / "metadata.yaml").is_file():
        return True
    return any(p.suffix.lower() in _BAG_SUFFIXES for p in path.iterdir() if p.is_file())
