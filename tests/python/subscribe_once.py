"""A NATS subscriber in another language than the services (nats-py): prints the
first message on a subject as one JSON line {subject, headers, data}, so a test can
check that CloudEvents headers and canonical JSON reach any client.

usage: subscribe_once.py NATS_URL SUBJECT
"""
import asyncio
import json
import sys

import nats


async def main(url: str, subject: str) -> None:
    nc = await nats.connect(url)
    sub = await nc.subscribe(subject)
    await nc.flush()
    print("ready", flush=True)
    msg = await sub.next_msg(timeout=30)
    print(json.dumps({
        "subject": msg.subject,
        "headers": dict(msg.headers or {}),
        "data": json.loads(msg.data),
    }), flush=True)
    await nc.close()


asyncio.run(main(sys.argv[1], sys.argv[2]))
