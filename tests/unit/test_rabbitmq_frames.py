"""The publish frames the RabbitMQ publisher writes itself (adapters/rabbitmq/frames.py) are the
bytes pamqp makes for the same publish from the aio-pika message the adapter used to send."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
from aiormq.abc import ChannelFrame
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from campaign_service.adapters.rabbitmq.frames import publish_frames
from campaign_service.adapters.rabbitmq.publisher import amqp_message, message_frames
from campaign_service.domain.events import OutboxMessage

short = st.text(max_size=40)
headers = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=60), max_size=6)


def pamqp_bytes(
    channel: int, exchange: str, key: str, message: aio_pika.Message, mandatory: bool, max_body_frame: int
) -> bytes:
    body = message.body
    parts = [ContentBody(body[i : i + max_body_frame]) for i in range(0, len(body), max_body_frame)]
    frames: list[Any] = [
        commands.Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory),
        ContentHeader(body_size=len(body), properties=message.properties),
        *parts,
    ]
    return ChannelFrame.marshall(channel_number=channel, frames=frames).payload


@given(
    channel=st.integers(1, 2047),
    exchange=st.from_regex(r"[a-zA-Z0-9._:-]{0,40}", fullmatch=True),
    key=st.text(max_size=80),
    body=st.binary(max_size=3000),
    headers=headers,
    message_id=short,
    correlation_id=st.none() | short,
    type_=short,
    persistent=st.booleans(),
    mandatory=st.booleans(),
    max_body_frame=st.sampled_from([100, 131064]),
)
def test_the_frames_are_what_pamqp_makes_of_the_same_message(
    channel: int,
    exchange: str,
    key: str,
    body: bytes,
    headers: dict[str, str],
    message_id: str,
    correlation_id: str | None,
    type_: str,
    persistent: bool,
    mandatory: bool,
    max_body_frame: int,
) -> None:
    message = aio_pika.Message(
        body,
        headers=dict(headers),
        message_id=message_id,
        correlation_id=correlation_id,
        type=type_,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT if persistent else aio_pika.DeliveryMode.NOT_PERSISTENT,
    )
    ours = publish_frames(
        channel,
        exchange,
        key,
        body,
        headers=headers,
        message_id=message_id,
        correlation_id=correlation_id,
        type_=type_,
        persistent=persistent,
        mandatory=mandatory,
        max_body_frame=max_body_frame,
    )
    assert ours == pamqp_bytes(channel, exchange, key, message, mandatory, max_body_frame)


@given(
    key=st.text(min_size=1, max_size=60),
    body=st.binary(max_size=600),
    headers=headers,
    correlation=st.none() | st.uuids().map(str),
)
def test_an_outbox_message_goes_out_as_the_aio_pika_message_of_it(
    key: str, body: bytes, headers: dict[str, str], correlation: str | None
) -> None:
    if correlation is not None:
        headers = {**headers, "correlation_id": correlation}
    message = OutboxMessage(uuid.uuid4(), uuid.uuid4(), "vip_tier.assigned", key, {}, headers)
    expected = pamqp_bytes(7, message.topic, key, amqp_message(message, body), True, 131064)
    assert message_frames(7, message, body, 131064) == expected
