"""Fixtures for the runtime tests; the builders live in runtime_testkit."""

from pathlib import Path

import pytest
from runtime_testkit import CLASS_NAMES, make_artifact, write_video


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "artifact")


@pytest.fixture(scope="session")
def colour_video(tmp_path_factory) -> tuple:
    """A 12-frame mp4v video cycling through the four colours, with its labels."""
    colours = [CLASS_NAMES[i % 4] for i in range(12)]
    path = write_video(tmp_path_factory.mktemp("video") / "colours.mp4", colours)
    return path, [CLASS_NAMES.index(c) for c in colours]
