"""The read lease on the mapped model (runtime/file_lease.py), in this process.

Without it, `cp other.gguf model.gguf` over the model of a running chatfile truncates the
mapped file: the next read of the map (the load, and in quant mode every step after it)
ends the process with SIGBUS, or answers from a mix of two models. With it, the copy
waits while the program stops with one clear line. tests/e2e/test_file_lease_server.py
drives the real server; here the pieces: who takes a lease, that the signal arrives
(even when the map was opened by a thread that has ended), and when the lease goes.
"""
import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from runtime import file_lease, gguf
from tests.conftest import MODELS

TINY = MODELS / "tiny-llama-q8_0.gguf"
OTHER = MODELS / "tiny-llama-q4_0.gguf"  # a smaller file: reads past its end would SIGBUS
WAIT_S = 30  # far below the kernel's 45 s lease-break-time, far above any real wait

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="file leases (F_SETLEASE) exist on Linux only")


@pytest.fixture
def armed(monkeypatch):
    """arm() for one test. The forced exit that backs the clean stop would end pytest."""
    monkeypatch.setattr(file_lease, "_end_soon", lambda: None)
    assert file_lease.arm()
    yield
    file_lease.disarm()


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.gguf"
    shutil.copy(TINY, path)
    return path


class _Copy:
    """`cp OTHER path`, started and waited for by another thread: the SIGIO handler raises
    in the main thread wherever it is, and that must be a test's wait, not Popen's. Where
    the handler is to raise, start() goes inside the test's pytest.raises: the copy can
    open the file before start() has returned."""

    def __init__(self, path):
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(path,), daemon=True)

    def start(self) -> "_Copy":
        self.thread.start()
        return self

    def _run(self, path):
        self.result = subprocess.run(["cp", str(OTHER), str(path)], capture_output=True,
                                     text=True)

    def running(self) -> bool:
        return self.thread.is_alive()

    def wait(self, timeout_s: float) -> int:
        self.thread.join(timeout_s)
        assert self.result is not None, f"cp still waits after {timeout_s} s"
        assert not self.result.stderr, self.result.stderr
        return self.result.returncode


def _copy_over(path) -> _Copy:
    return _Copy(path).start()


def _wait_for_overwritten() -> None:
    """Sleep in the main thread until the SIGIO handler raises there."""
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        time.sleep(0.02)


def _leases() -> dict:
    return dict(file_lease._leased)


def test_a_copy_over_the_mapped_model_stops_the_program_with_one_line(armed, model, capfd):
    g = gguf.read(model)
    assert list(_leases().values()) == [str(model)]
    cp = _Copy(model)
    with pytest.raises(file_lease.Overwritten) as e:
        cp.start()
        _wait_for_overwritten()
    assert e.value.code == file_lease.EXIT_STATUS != 0
    assert cp.running(), "the copy must wait while the program stops"
    err = capfd.readouterr().err
    assert err.strip() == file_lease.message(str(model))
    assert "opened " + str(model) + " for writing" in err and "Traceback" not in err
    del g, e
    gc.collect()  # the map goes, and its lease with it: the copy proceeds
    assert cp.wait(WAIT_S) == 0
    assert model.read_bytes() == OTHER.read_bytes()


def test_a_lease_taken_by_a_thread_that_has_ended_still_stops_the_program(armed, model):
    """The server maps the model in its loader thread, which ends after the load. The
    kernel signals the thread that took the lease: without F_SETOWN to the process the
    signal was lost, and the copy waited 45 s and then truncated the map under us."""
    opened = []
    t = threading.Thread(target=lambda: opened.append(gguf.read(model)))
    t.start()
    t.join()
    assert opened and _leases()
    cp = _Copy(model)
    with pytest.raises(file_lease.Overwritten):
        cp.start()
        _wait_for_overwritten()
    opened.clear()
    gc.collect()
    assert cp.wait(WAIT_S) == 0


def test_without_arm_no_lease_is_taken(model):
    """A library user's process (or a test) keeps SIGIO's default action and its files
    free: nothing changes."""
    assert _sigio_is_default()
    g = gguf.read(model)
    assert not _leases()
    cp = _copy_over(model)
    assert cp.wait(WAIT_S) == 0
    del g


def _sigio_is_default() -> bool:
    return signal.getsignal(signal.SIGIO) is signal.SIG_DFL


@pytest.mark.parametrize("why", ["vocab_only", "open for writing", "parse error"])
def test_no_lease_where_nothing_will_read_the_map_or_a_writer_is_there(armed, model, why):
    if why == "vocab_only":  # the header is read at once; tensor data never
        g = gguf.read(model, vocab_only=True)
    elif why == "open for writing":  # F_SETLEASE refuses (EAGAIN): nothing changes
        with open(model, "r+b"):
            g = gguf.read(model)
    else:  # an error: the lease goes at once, not when the garbage collector runs
        with open(model, "r+b") as f:
            f.seek(4)
            f.write(b"\x09\0\0\0")  # GGUF version 9
        with pytest.raises(gguf.GGUFError, match="unsupported GGUF version 9"):
            gguf.read(model)
        g = None
    assert not _leases()
    assert _copy_over(model).wait(WAIT_S) == 0
    del g


def test_the_lease_goes_with_the_map(armed, model):
    g = gguf.read(model)
    embd = g.raw("token_embd.weight")  # a view keeps the map, and so the lease
    del g
    gc.collect()
    assert _leases()
    del embd
    gc.collect()
    assert not _leases()
    assert _copy_over(model).wait(WAIT_S) == 0


@pytest.mark.parametrize("mode", ["f32", "int8"])
def test_a_model_that_copied_its_weights_lets_go_of_the_file_after_the_load(armed, model, mode):
    """f32 and int8 modes copy every weight at load, the token embedding too: the map,
    and its lease, go at the end of the load. A copy over the file then goes through at
    once, and the model answers as before (it kept the embedding in the map, so a copy
    stopped even an idle float32 chat)."""
    from runtime.model import Model
    m = Model.load(model, mode=mode)
    assert not _leases()
    before = m.logits([1, 2, 3])
    assert _copy_over(model).wait(WAIT_S) == 0
    assert model.read_bytes() == OTHER.read_bytes()
    assert (m.logits([1, 2, 3]) == before).all()


def test_a_quant_model_keeps_its_lease_as_it_reads_the_file_at_every_step(armed, model):
    from runtime.model import Model
    m = Model.load(model, mode="quant")
    assert list(_leases().values()) == [str(model)]
    del m
    gc.collect()
    assert not _leases()


def test_arm_is_refused_off_the_main_thread():
    got = []
    t = threading.Thread(target=lambda: got.append(file_lease.arm()))
    t.start()
    t.join()
    assert got == [False]
    assert _sigio_is_default()


def test_a_handler_of_the_program_s_own_is_left_alone(monkeypatch):
    mine = lambda signum, frame: None  # noqa: E731
    monkeypatch.setattr(signal, "getsignal", lambda s: mine if s == signal.SIGIO else signal.SIG_DFL)
    assert not file_lease.arm()


def test_a_sigio_of_something_else_is_ignored(armed, model):
    """SIGIO also reports asynchronous I/O: only a lease being broken stops the program."""
    g = gguf.read(model)
    os.kill(os.getpid(), signal.SIGIO)  # the handler runs here, and must return quietly
    assert _leases()
    del g


@pytest.fixture
def disarmed_after():
    """The process as it was, whatever a test left armed (a failing one too): an armed
    pytest would take a lease at every later gguf.read."""
    yield
    file_lease.disarm()


def test_a_command_run_in_process_leaves_no_lease_and_no_handler(model, monkeypatch, capsys,
                                                                 disarmed_after):
    """`chatfile chat` run by main() in a process that goes on (tests/runtime/test_cli.py
    does): it armed and never disarmed, so the process took a lease at every later
    gguf.read, on the test fixtures too, and a write to one of them, by anyone, stopped
    it (pytest ended 10 s later); this file's first test failed after test_cli.py's."""
    import io

    from runtime.cli import main
    monkeypatch.setattr(sys, "stdin", io.StringIO("Once upon a time"))
    assert main(["chat", str(model), "-n", "2", "--temp", "0"]) == 0
    assert capsys.readouterr().out.strip()
    assert _sigio_is_default() and not _leases()
    assert _copy_over(model).wait(WAIT_S) == 0  # nothing in the way, nothing stops


def test_a_server_run_in_process_leaves_no_lease_and_no_handler(model, disarmed_after):
    """serve() in the main thread, stopped as by Ctrl+C: the leases and the handler go with
    it, so that a copy during Python's shutdown meets neither (the handler raised in an
    exit hook: "Exception ignored ... Overwritten")."""
    import json
    import urllib.request

    from runtime import server
    seen = {}

    def stop_once_loaded(url):
        def run():
            end = time.monotonic() + WAIT_S
            while time.monotonic() < end:
                try:
                    with urllib.request.urlopen(url + "health", timeout=5) as r:
                        if json.load(r).get("status") == "ok":
                            break
                except OSError:
                    pass
                time.sleep(0.05)
            seen["leases"] = _leases()
            # serve() stops at SIGTERM as at Ctrl+C; a SIGINT would be lost on a pytest
            # started in the background, where it is ignored.
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=run, daemon=True).start()
    switch_s, on_sigterm = sys.getswitchinterval(), signal.getsignal(signal.SIGTERM)
    try:
        # quant mode, which reads the file at every step: it holds the lease while it serves
        assert server.serve(model, port=0, open_browser=False, ready=stop_once_loaded,
                            mode="quant") == 0
    finally:  # serve() sets both for the process's life
        sys.setswitchinterval(switch_s)
        signal.signal(signal.SIGTERM, on_sigterm)
    assert list(seen["leases"].values()) == [str(model)]  # it was armed while it served
    assert _sigio_is_default() and not _leases()


def test_armed_keeps_the_leases_when_the_program_stops_for_a_writer(model, disarmed_after):
    """The process is on its way out: its leases must hold the writer back until it is
    gone, or the copy would truncate the map under a reply still being written."""
    with pytest.raises(file_lease.Overwritten):
        with file_lease.armed():
            g = gguf.read(model)
            raise file_lease.Overwritten(file_lease.EXIT_STATUS)
    assert list(_leases().values()) == [str(model)] and not _sigio_is_default()
    del g


def test_armed_inside_armed_leaves_the_outer_one_armed(armed, model):
    with file_lease.armed():
        pass
    assert not _sigio_is_default()
    g = gguf.read(model)
    assert _leases()
    del g
