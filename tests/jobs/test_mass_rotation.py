"""`keyrotor.rotate_all` through a real worker: one `rotate_realms` batch per keyset page of the
realms a rotation covers, the rotation marked queued, and a duplicated fan-out harmless."""

from __future__ import annotations

from tests.jobs.test_batches import rotations
from tests.support.stack import Stack, wait_for
from worker.publish.progress import Fanout, read_fanout

# Batches of two realms, so a handful of realms makes several batches.
STACK_SETTINGS = {"rotate_batch": "2"}


def test_the_fan_out_queues_each_page_once_and_marks_the_rotation_queued(stack: Stack) -> None:
    covered = sorted(stack.service.create_realm(f"r{number}").id for number in range(5))
    stack.service.create_realm("other")
    rotation = stack.service.start_rotation(None, "r", None)
    assert rotation.total == 5
    stack.worker("w1")

    stack.send("keyrotor.rotate_all", rotation.id)
    stack.send("keyrotor.rotate_all", rotation.id)  # a duplicated message

    wait_for(lambda: stack.service.rotation(rotation.id).batches == 3, 30, "the fan-out")
    wait_for(lambda: sorted(rotations(stack)) == covered, 30, "every batch")
    assert read_fanout(stack.redis, rotation.id) == Fanout(3, "", finished=True)
    assert stack.service.rotation(rotation.id).queued_at is not None
    assert rotations(stack) == dict.fromkeys(covered, 1)
    assert "rotation " + rotation.id + ": 3 batches queued" in stack.log("w1")


def test_an_unknown_rotation_queues_nothing(stack: Stack) -> None:
    stack.worker("w1")
    stack.send("keyrotor.rotate_all", "rot_nothere")
    wait_for(lambda: "rot_nothere is not recorded" in stack.log("w1"), 15, "the warning")
