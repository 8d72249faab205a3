"""Fake upstream servers (real HTTP on 127.0.0.1, port 0) shared by the tests."""
