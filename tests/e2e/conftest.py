"""Fixtures shared by the end-to-end modules that run one registry and one service for a whole module.

The function-scoped ``registry`` of tests/conftest.py stays the default (a fresh registry per test); a
module that shares one across its tests says so with ``module_registry``, and starts its service stacks
with ``module_stack`` (gunicorn and qcluster on that registry, stopped when the module ends).
"""
from __future__ import annotations

import pytest

from tests.service.stack import ServiceStack
from tests.support.registry import RegistryServer


@pytest.fixture(scope="module")
def module_registry(tmp_path_factory):
    """One real registry for every test of a module (cheaper than a stack per test, and the stack needs it)."""
    server = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_stack(module_registry, tmp_path_factory):
    """``module_stack(qcluster=True, **ServiceStack keywords)``: a started stack on ``module_registry``;
    every stack it started is stopped after the module's last test, even when one of them fails."""
    started: list[ServiceStack] = []

    def start(*, qcluster: bool = True, **kwargs) -> ServiceStack:
        stack = ServiceStack(tmp_path_factory.mktemp("stack"), module_registry.host, **kwargs)
        started.append(stack)
        return stack.start(qcluster=qcluster)

    yield start
    for stack in reversed(started):
        stack.stop()
