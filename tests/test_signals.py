"""SIGTERM and Ctrl-C reach Python in the main thread only, never a runtime's native thread (utils.signals)."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, signal, subprocess, sys, threading, time
    from edgecv.utils import signals
    signals.install()
    seen = {}
    t = threading.Thread(target=lambda: seen.update(mask=signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    t.start(); t.join()
    print("thread blocks SIGTERM:", signal.SIGTERM in seen["mask"] and signal.SIGINT in seen["mask"])
    child = subprocess.run(["grep", "SigBlk", "/proc/self/status"], capture_output=True, text=True,
                           preexec_fn=signals.child_unblock).stdout.split()[1]
    print("child blocks SIGTERM:", bool(int(child, 16) >> (signal.SIGTERM - 1) & 1))
    os.kill(os.getpid(), signal.SIG)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 10:
            time.sleep(0.01)
        print("never raised")
    except signals.INTERRUPTS as e:
        print("raised", type(e).__name__, "in", threading.current_thread().name, f"{time.monotonic() - t0:.2f}")
""")


def run(sig):
    r = subprocess.run([sys.executable, "-c", SCRIPT.replace("signal.SIG)", f"signal.{sig})")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_sigterm_is_blocked_in_threads_and_raised_in_the_main_thread():
    out = run("SIGTERM")
    assert out[0] == "thread blocks SIGTERM: True"  # threads started later (the runtimes' own) inherit the block
    assert out[1] == "child blocks SIGTERM: False"  # child processes get it back
    word, exc, _, thread, seconds = out[2].split()
    assert (word, exc, thread) == ("raised", "Terminated", "MainThread") and float(seconds) < 1.0


def test_ctrl_c_is_raised_as_keyboard_interrupt_in_the_main_thread():
    word, exc, _, thread, seconds = run("SIGINT")[2].split()
    assert (word, exc, thread) == ("raised", "KeyboardInterrupt", "MainThread") and float(seconds) < 1.0


def test_sigint_exit_code_is_130(tiny_bundle, tmp_path):
    import signal
    import time

    from test_bad_input import CLASSES, ENV, _tree

    d = _tree(tmp_path / "d", CLASSES, per_class=2)
    p = subprocess.Popen([sys.executable, "-m", "edgecv", "run", str(tiny_bundle), "--source", str(d), "--loop",
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert p.stdout.readline().startswith('{"frame"')
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "Traceback" not in err and '"interrupted": "SIGINT"' in err
