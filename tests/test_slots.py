"""Slots: the upstream pool's bound on concurrent exchanges (sidecar/slots.py)."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.core.slots import Slots


def test_free_slots_are_taken_without_waiting_and_given_back() -> None:
    slots = Slots(2)
    assert slots.try_take() and slots.try_take()
    assert not slots.try_take()
    slots.give()
    assert slots.free == 1
    assert slots.try_take()


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        Slots(0)


def test_waiters_get_freed_slots_first_come_first_served() -> None:
    async def scenario() -> list[str]:
        slots = Slots(1)
        assert slots.try_take()
        order: list[str] = []

        async def holder(name: str) -> None:
            await slots.take()
            order.append(name)

        first = asyncio.create_task(holder("first"))
        second = asyncio.create_task(holder("second"))
        await asyncio.sleep(0)  # both wait now
        assert not slots.try_take(), "a newcomer must not jump the queue"
        slots.give()
        await first
        assert order == ["first"] and not second.done()
        slots.give()
        await second
        assert slots.free == 0  # the slot went from holder to holder, never free
        return order

    assert asyncio.run(scenario()) == ["first", "second"]


def test_a_waiter_cancelled_while_waiting_leaves_nothing_behind() -> None:
    async def scenario() -> None:
        slots = Slots(1)
        assert slots.try_take()
        waiting = asyncio.create_task(slots.take())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        slots.give()
        assert slots.free == 1 and slots.try_take()

    asyncio.run(scenario())


def test_a_slot_handed_over_as_the_waiter_is_cancelled_is_passed_on() -> None:
    async def scenario() -> None:
        slots = Slots(1)
        assert slots.try_take()
        doomed = asyncio.create_task(slots.take())
        heir = asyncio.create_task(slots.take())
        await asyncio.sleep(0)
        slots.give()  # hands the slot to ``doomed``...
        doomed.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await asyncio.wait_for(heir, 1)  # the slot reached the next waiter
        slots.give()
        assert slots.free == 1

    asyncio.run(scenario())
