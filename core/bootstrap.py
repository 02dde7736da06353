"""``python -m core.bootstrap``: create the Kafka topics (idempotent) and warm up the broker's
internal topics. Run by ``make run``/``make test`` (deploy/local/infra.sh up).

A fresh broker creates ``__consumer_offsets`` and ``__transaction_state`` on first use, which
takes seconds while leaders are elected; the first consumer group or transactional producer
(an aggregator, or the first test) would otherwise pay that, racing its own timeouts. One
transactional producer start and one offset commit here make both exist and be led.
"""

from __future__ import annotations

import asyncio
import sys

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from core.backoff import Backoff
from core.kafka import ensure_topics, make_consumer, make_producer
from core.settings import Settings
from core.topics import Topics


async def warm_up(s: Settings, *, attempts: int = 40) -> None:
    topics = Topics.from_settings(s)
    backoff = Backoff(initial=0.2, maximum=2.0)
    for attempt in range(attempts):
        producer = make_producer(s, transactional_id=f"{s.topic_prefix}.bootstrap")
        consumer = make_consumer(s, group_id=f"{s.topic_prefix}.bootstrap")
        try:
            await producer.start()  # InitProducerId: __transaction_state exists and is led
            await consumer.start()
            tp = TopicPartition(topics.input, 0)
            consumer.assign([tp])
            await consumer.commit({tp: 0})  # __consumer_offsets exists and is led
            return
        except KafkaError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(backoff.next())
        finally:
            await consumer.stop()
            await producer.stop()


async def _main() -> None:
    s = Settings.from_env()
    created = await ensure_topics(s)
    await warm_up(s)
    print(f"[bootstrap] topics ready ({len(created)} created), broker warmed up", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(_main())
