"""The gateway counts Envoy's file watches before it writes them (gateway/inotify.py)."""

from __future__ import annotations

import os

import pytest

from modelport.gateway import inotify


def test_a_configuration_that_fits_is_let_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inotify, "limit", lambda: 128)
    monkeypatch.setattr(inotify, "in_use", lambda uid=None: 20)
    assert inotify.shortfall(100) is None  # 100 + 4 of Envoy's own <= 108 free


def test_one_that_does_not_names_the_sysctl_and_what_to_raise_it_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inotify, "limit", lambda: 128)
    monkeypatch.setattr(inotify, "in_use", lambda uid=None: 20)
    problem = inotify.shortfall(230)
    assert problem is not None
    assert "Envoy needs 234 inotify instances" in problem
    assert "this user has 108 of fs.inotify.max_user_instances=128 free" in problem
    raised = int(problem.rsplit("=", 1)[1])
    assert raised - 20 >= 234  # the suggested limit leaves room for what is in use


def test_what_a_running_envoy_holds_counts_as_free_for_its_next_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inotify, "limit", lambda: 128)
    monkeypatch.setattr(inotify, "in_use", lambda uid=None: 124)  # Envoy holds 104 of them
    assert inotify.shortfall(100, held_by_envoy=104) is None  # 104 needed, 108 free
    assert inotify.shortfall(130, held_by_envoy=104) is not None


def test_no_limit_to_read_means_no_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inotify, "limit", lambda: None)
    assert inotify.shortfall(10_000) is None


def test_in_use_counts_this_processes_own_instances() -> None:
    if inotify.limit() is None:
        pytest.skip("no inotify here")
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    before = inotify.in_use()
    fd = libc.inotify_init()
    assert fd >= 0
    try:
        assert inotify.in_use() >= before + 1
    finally:
        os.close(fd)
