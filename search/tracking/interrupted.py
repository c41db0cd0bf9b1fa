"""Closing a study's MLflow runs after Ctrl-C / SIGTERM (search/interrupt.py): the parent and
every child still RUNNING become KILLED, each tagged ``interrupted``; ``--resume`` re-opens them
(StudyRecorder.start, search.tracking.callback.MlflowTuneCallback.run_id)."""
from __future__ import annotations

from search.tracking.recorder import MAX_TAG_CHARS, PARENT_TAG, StudyRecorder, _search


def mark_killed(recorder: StudyRecorder, message: str) -> None:
    """Mark the parent run and its RUNNING children KILLED, ``message`` as tag ``interrupted``."""
    client, parent = recorder.client, recorder.parent_run_id
    if parent is None:
        return
    running = _search(client, recorder.experiment_id,
                      f"tags.`{PARENT_TAG}` = '{parent}' AND attributes.status = 'RUNNING'")
    for run in running:
        client.set_tag(run.info.run_id, "interrupted", message[:MAX_TAG_CHARS])
        client.set_terminated(run.info.run_id, "KILLED")
    client.set_tag(parent, "interrupted", message[:MAX_TAG_CHARS])
    client.set_terminated(parent, "KILLED")
