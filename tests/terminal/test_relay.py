"""The relay between replicas, on a real PostgreSQL (LISTEN/NOTIFY) and in process; the frames."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from fleetkeeper.terminal.protocol import (
    DEVICE_TO_SERVER,
    MalformedFrameError,
    decode_control,
    decode_data,
    encode_data,
)
from fleetkeeper.terminal.relay import (
    InProcessRelay,
    PostgresRelay,
    RelayOverflowError,
    Subscription,
    relay_for,
)
from tests.conftest import FreshDatabaseUrl


async def test_two_relays_on_one_database_reach_each_other(fresh_database_url: FreshDatabaseUrl) -> None:
    url = await fresh_database_url("postgresql")
    assert isinstance(relay_for(url), PostgresRelay)
    replica_a, replica_b = PostgresRelay(url), PostgresRelay(url)
    try:
        async with replica_a.subscribe("device:dev_1") as subscription:
            await replica_b.publish(
                "device:dev_1", {"type": "data", "session": "s", "data": b"\x00\xffbytes"}
            )
            await replica_b.publish("device:dev_2", {"type": "data", "session": "s", "data": b"not for us"})
            await replica_b.publish("device:dev_1", {"type": "close", "session": "s", "reason": "x"})
            async with asyncio.timeout(30):
                assert await subscription.get() == {"type": "data", "session": "s", "data": b"\x00\xffbytes"}
                assert (await subscription.get())["type"] == "close"

            with pytest.raises(ValueError, match="NOTIFY limit"):
                await replica_b.publish("device:dev_1", {"type": "data", "session": "s", "data": b"x" * 8000})

            # The listening connection dies: the next use opens another and listens again.
            admin = await asyncpg.connect(url.replace("+asyncpg", ""))
            try:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            finally:
                await admin.close()
            # Replica A only listens: it must notice by itself and listen again. Until it has, a
            # notification finds nobody, so replica B sends until one arrives.
            async with asyncio.timeout(30):
                while True:
                    await replica_b.publish("device:dev_1", {"type": "after", "session": "s"})
                    try:
                        async with asyncio.timeout(0.5):
                            assert (await subscription.get())["type"] == "after"
                        break
                    except TimeoutError:
                        continue
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_in_process_relay_and_a_reader_that_falls_behind() -> None:
    relay = InProcessRelay()
    async with relay.subscribe("session:s") as subscription:
        await relay.publish("session:s", {"type": "opened"})
        assert await subscription.get() == {"type": "opened"}
    await relay.publish("session:s", {"type": "nobody listens"})

    slow = Subscription("session:s", size=2)
    for number in range(3):
        slow.deliver({"n": number})
    with pytest.raises(RelayOverflowError):
        await slow.get()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("[]", "malformed_frame"),
        ('{"type": 3}', "malformed_frame"),
        ('{"type": "exec"}', "unknown_type"),
        ('{"type": "closed", "session": "term_' + "a" * 26 + '"}', "malformed_frame"),  # no reason
        ('{"type": "closed", "session": 7, "reason": "x"}', "malformed_frame"),
        ("x" * 20000, "malformed_frame"),
    ],
)
def test_malformed_control_frames_are_named(text: str, code: str) -> None:
    with pytest.raises(MalformedFrameError) as raised:
        decode_control(text, DEVICE_TO_SERVER)
    assert raised.value.code == code


def test_data_frames_round_trip_and_bad_ones_are_refused() -> None:
    session = "term_" + "b" * 26
    assert decode_data(encode_data(session, b"out")).data == b"out"
    for frame in (b"", b"\x40short", b"\x03abc", bytes([31]) + b"\xff" * 31):
        with pytest.raises(MalformedFrameError):
            decode_data(frame)
