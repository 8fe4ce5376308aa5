"""panoramisk receiving an ami-sim flood: events/s, sequence checked.

python panoramisk_flood.py HOST PORT COUNT  (ami-sim must be running)
"""
import asyncio
import sys
import time

from panoramisk import Manager


async def main(host, port, count):
    manager = Manager(host=host, port=port, username="sb", secret="sbsecret", ping_delay=0, ping_interval=3600)
    state = {"n": 0, "expected": None, "gaps": 0, "start": None}
    done = asyncio.get_running_loop().create_future()

    def on_event(_manager, message):
        seq = int(message.SimSeq)
        if state["start"] is None:
            state["start"] = time.perf_counter()
            state["expected"] = seq
        if seq != state["expected"]:
            state["gaps"] += 1
        state["expected"] = seq + 1
        state["n"] += 1
        if state["n"] >= count and not done.done():
            done.set_result(time.perf_counter())

    manager.register_event("Newexten", on_event)
    await manager.connect()
    await asyncio.sleep(0.5)
    await manager.send_action({"Action": "SimFlood", "Rate": "0", "Count": str(count)})
    end = await asyncio.wait_for(done, 600)
    secs = end - state["start"]
    print(f"| panoramisk | {count} | {state['n']} | {state['gaps']} | {secs:.2f} | {state['n'] / secs:.0f} |")
    manager.close()


asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
