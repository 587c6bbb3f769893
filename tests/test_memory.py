"""The settler (addon/memory.py): after activity, once things stand still, it collects the
garbage and trims the heap, once; while activity goes on, never."""

from __future__ import annotations

import gc

import pytest

from addon import memory
from addon.memory import Settler


def test_it_settles_once_per_quiet_spell_and_never_while_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collected: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    settler = Settler(quiet=0.0)
    assert [settler.tick(n) for n in (1, 2, 3)] == [False, False, False]  # busy
    assert settler.tick(3) is True  # stood still
    assert [settler.tick(3) for _ in range(3)] == [False, False, False]  # already did
    assert settler.tick(4) is False and settler.tick(4) is True  # the next spell
    assert settler.settled == 2 and len(collected) == 2


def test_it_waits_for_the_quiet_time() -> None:
    settler = Settler(quiet=3600.0)
    assert settler.tick(1) is False
    assert settler.tick(1) is False and settler.settled == 0


def test_without_glibc_it_only_collects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    settler = Settler(quiet=0.0)
    settler.tick(1)
    assert settler.tick(1) is True and settler.settled == 1
