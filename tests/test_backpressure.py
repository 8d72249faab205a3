"""A slow reader of a long stream: the gateway relays every chunk in order without holding the stream.

Memory is traced in-process with tracemalloc, which sees Python's allocations (the gateway's
events, strings and buffers; the fake's and the test's too) but not grpc's C core. Two measures:

- The peak of all traced memory while the stream is relayed stays below the stream's own size on
  the wire: a gateway that held the upstream's body, or its parsed events, could not.
- The memory held by objects the gateway's own code allocated (``providers/``, ``server/``),
  sampled while the reader pauses, stays small: a gateway that held even the small relayed
  messages would hold about 100 bytes per chunk, 1 MB for the stream (measured: ~6 KB relaying,
  ~1.2 MB holding the messages).

gRPC flow control does let the gateway run ahead of the reader by what grpc's window holds: the
whole of this stream (~0.3 MB of protobuf) fits in it, so the fake finishes writing early. That
buffer is grpc's and bounded; what matters here is that the gateway adds none of its own.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from providers.limits import DEFAULT_LIMITS
from tests.fakes._server import FLOOD_CHUNKS, flood_pieces
from tests.fakes.upstreams import PROVIDERS, Fault, Upstream, open_upstream, serving

#: The reader pauses this long after every READ_BATCH chunks, so the upstream is always ahead of it;
#: the gateway's memory is sampled at each pause.
READ_BATCH = 1_000
READ_PAUSE = 0.05

#: Allocated by the gateway's code and still alive at a pause: a few parsed events and buffers.
GATEWAY_HELD_BOUND = 256 * 1024

_ROOT = Path(__file__).resolve().parent.parent
_GATEWAY_CODE = [tracemalloc.Filter(True, str(_ROOT / package / "*")) for package in ("providers", "server")]


@pytest.fixture(params=PROVIDERS)
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[Upstream]:
    async with open_upstream(request.param) as started:
        yield started


async def test_a_slow_reader_gets_every_chunk_in_order_while_memory_stays_flat(upstream: Upstream) -> None:
    expected = flood_pieces()
    async with serving((upstream.service(), DEFAULT_LIMITS)) as gateway:
        # A first call warms caches (imports, pools, grpc) so that they do not count as growth.
        async for _ in gateway.stub.StreamChat(upstream.stream_request()):
            pass

        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            call = gateway.stub.StreamChat(upstream.stream_request(Fault.FLOOD))
            # Compared as they come, not kept: a list of them would count as memory held.
            received = out_of_order = 0
            gateway_held: list[int] = []
            async for response in call:
                if not response.delta:
                    continue
                out_of_order += response.delta != expected[received]
                received += 1
                if received % READ_BATCH == 0:
                    gateway_held.append(_held_by_gateway_code())
                    await asyncio.sleep(READ_PAUSE)
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        assert await call.code() == grpc.StatusCode.OK

    assert received == FLOOD_CHUNKS
    assert out_of_order == 0
    stream_bytes = upstream.server.flood_bytes  # ~1.9 MB from the OpenAI fake, ~3.3 MB from Coze's
    assert peak < stream_bytes, f"traced memory peaked {peak / 1e6:.2f} MB above the baseline"
    assert max(gateway_held) < GATEWAY_HELD_BOUND, f"the gateway's code held {max(gateway_held)} bytes"


def _held_by_gateway_code() -> int:
    """Bytes of live objects whose allocation happened in the gateway's own code."""
    snapshot = tracemalloc.take_snapshot().filter_traces(_GATEWAY_CODE)
    return sum(statistic.size for statistic in snapshot.statistics("filename"))
