"""Child process for the crash test: writes under load and prints each write once it is acknowledged.

Usage: ``python -m tests.store.crash_writer DB KEY_FILE SEED``. Prints ``ready`` then, per acknowledged
write, one line ``B <block_id hex>``, ``A <audit seq>``, ``M <memory id>`` or ``O <outbox record id>``.
The test SIGKILLs this process at a random moment and checks that every printed write survived.
"""

from __future__ import annotations

import asyncio
import random
import sys

from daemon.store import Ed25519Signer, Store
from daemon.store.blocklog import BlockInput


async def blocks(store: Store, rnd: random.Random, worker: int) -> None:
    n = 0
    while True:
        n += 1
        batch = [
            BlockInput("TEXT", rnd.randbytes(rnd.randint(1, 2048)), {"w": worker, "n": n, "i": i})
            for i in range(rnd.randint(1, 4))
        ]
        infos = await store.append_blocks(batch)
        sys.stdout.write("".join(f"B {info.block_id.hex()}\n" for info in infos))
        sys.stdout.flush()


async def audits(store: Store, rnd: random.Random) -> None:
    while True:
        record = await store.audit_append("auth_failure", f"agent-{rnd.randint(1, 9)}", "api", {"x": rnd.random()})
        sys.stdout.write(f"A {record.seq}\n")
        sys.stdout.flush()


async def memories(store: Store, rnd: random.Random) -> None:
    while True:
        item = await store.memory.create(
            owner_type="agent", owner_id="crash", content=f"note {rnd.random()}",
            vector=[rnd.random() for _ in range(8)],
        )
        sys.stdout.write(f"M {item.id}\n")
        sys.stdout.flush()


async def outbox(store: Store, rnd: random.Random) -> None:
    n = 0
    while True:
        n += 1
        rid = f"ev-{rnd.getrandbits(64):016x}-{n}"
        await store.outbox_append("events", [(rid, b"payload")])
        sys.stdout.write(f"O {rid}\n")
        sys.stdout.flush()


async def main(db: str, key: str, seed: int) -> None:
    rnd = random.Random(seed)
    async with Store(db, signer=Ed25519Signer.from_file(key), embedding_dim=8, integrity_check="quick") as store:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        async with asyncio.TaskGroup() as tg:
            for worker in range(6):
                tg.create_task(blocks(store, random.Random(rnd.random()), worker))
            tg.create_task(audits(store, random.Random(rnd.random())))
            tg.create_task(memories(store, random.Random(rnd.random())))
            tg.create_task(outbox(store, random.Random(rnd.random())))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
