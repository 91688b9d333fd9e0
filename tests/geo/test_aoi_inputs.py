"""Event catalogues: every event gets a folder name of its own."""

from __future__ import annotations

import pytest

from pipelines.geo.aoi_inputs import read_events


def _names(tmp_path, ids: list[str]) -> list[str]:
    csv = tmp_path / "events.csv"
    rows = "".join(f"{i},2020-06-{n + 1:02d},28.{n},85.{n}\n" for n, i in enumerate(ids))
    csv.write_text("event_id,event_date,latitude,longitude\n" + rows)
    return [a.name for a in read_events(str(csv), 500.0)]


@pytest.mark.parametrize("ids, names", [
    # a repeat's generated name must not be the id of another event of the catalogue
    (["a", "a", "a-1"], ["a", "a-2", "a-1"]),
    (["a-1", "a", "a"], ["a-1", "a", "a-2"]),
    (["a", "a-1", "a", "a-1"], ["a", "a-1", "a-2", "a-1-1"]),
    (["a", "a", "a-1", "a-2", "a"], ["a", "a-3", "a-1", "a-2", "a-4"]),
    # blank ids are named after their row: a real id of that name keeps it
    (["", "event-1"], ["event-1", "event-1-1"]),
    # without a clash the names are those of earlier versions (resumable folders)
    (["a", "a", "a", "b"], ["a", "a-1", "a-2", "b"]),
])
def test_repeated_event_ids_get_names_no_other_event_has(tmp_path, ids, names):
    got = _names(tmp_path, ids)
    assert got == names
    assert len(set(got)) == len(got)
