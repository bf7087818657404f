"""A loopback OTLP/HTTP sink for the benchmark: answers 200 (an empty ExportTraceServiceResponse) to every
POST, keeps connections alive, and on SIGTERM prints how many export requests and bytes it received.
It does not decode what it gets: it runs on the load core and must cost as little as possible.

    python tests/bench/otlp_sink.py --port 4318
"""

import argparse
import asyncio
import contextlib
import signal

REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"


async def main(port: int) -> None:
    stats = {"requests": 0, "bytes": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                stats["requests"] += 1
                stats["bytes"] += length
                writer.write(REPLY)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"otlp sink on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    server.close()
    print(f"OTLPSINK requests={stats['requests']} bytes={stats['bytes']}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    asyncio.run(main(ap.parse_args().port))
