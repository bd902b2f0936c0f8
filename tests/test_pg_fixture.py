"""The embedded server's lifecycle (tests/pg.py), on real servers: close() right after a
stop, and after a stop and a restart, leaves nothing running and no data directory."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from tests import pg


def gone(proc: psutil.Process) -> bool:
    """Exited: reaped, or a zombie waiting for PID 1."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_close_right_after_a_stop_is_clean(own_server: pg.EmbeddedServer) -> None:
    postmaster = psutil.Process(own_server.postmaster)
    own_server.stop("immediate")
    assert gone(postmaster)  # stop() returns once the postmaster has exited
    assert pg.running_postmaster(own_server.data_dir) is None
    own_server.close()  # the postmaster may still be a zombie here: not a server to stop
    assert not own_server.data_dir.exists()
    own_server.close()  # and again, as the fixture will


def test_close_after_a_stop_and_a_restart_stops_the_new_postmaster(own_server: pg.EmbeddedServer) -> None:
    first = psutil.Process(own_server.postmaster)
    own_server.stop("immediate")
    psutil.wait_procs([first], timeout=10)  # reaped, so nothing of the first start is left to find
    own_server.start()
    second = pg.running_postmaster(own_server.data_dir)
    assert second is not None and second.pid == own_server.postmaster != first.pid
    own_server.close()
    assert gone(second)
    assert pg.postmasters_under(own_server.data_dir.parent) == []
    assert not own_server.data_dir.exists()


def test_stop_and_start_work_after_the_server_user_is_shut_out_of_the_temp_root(
    own_server: pg.EmbeddedServer,
) -> None:
    # As root, the server runs as a system user, whom every pytest session that starts shuts
    # out of /tmp/pytest-of-root (chmod 0700). An ancestor of the data directory stands in for it.
    if own_server.server.system_user is None:  # type: ignore[attr-defined]
        pytest.skip("the server runs as the user running the tests")
    ancestor = own_server.data_dir.parent.parent
    ancestor.chmod(0o700)
    own_server.stop("immediate")
    ancestor.chmod(0o700)
    own_server.start()
    assert pg.running_postmaster(own_server.data_dir) is not None
    ancestor.chmod(0o700)
    own_server.close()
    assert not own_server.data_dir.exists()


def test_a_postmaster_pid_naming_another_process_is_no_server(tmp_path: Path) -> None:
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n{tmp_path}\n")
    assert pg.running_postmaster(tmp_path) is None
    (tmp_path / "postmaster.pid").write_text("not a pid\n")
    assert pg.running_postmaster(tmp_path) is None
