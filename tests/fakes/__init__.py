"""Fake upstream servers (real HTTP on 127.0.0.1, port 0) shared by the tests.

`coze` and `openai` are the fakes, each a `_server.FakeUpstream` with its own wire format and fault
scenarios; `upstreams` puts both behind one interface (a fault, the service that reaches it, a gateway
serving it); `resources` counts what a leak would make grow.
"""
