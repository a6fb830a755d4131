"""Progress bars: ten redraws a second in a terminal, one every LOG_INTERVAL_S in a log."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

LOOP = """
import time
from edgecv.utils.progress import progress
bar = progress(range(40), desc="work")
for i in bar:
    time.sleep(0.03)
    bar.set_postfix(step=i, refresh=False)
"""


def redraws(output: bytes) -> int:
    return output.count(b"work")


def test_a_log_gets_a_bar_only_at_start_and_end_but_a_terminal_sees_it_move():
    logged = subprocess.run([sys.executable, "-c", LOOP], capture_output=True, timeout=60)
    assert logged.returncode == 0, logged.stderr
    assert 1 <= redraws(logged.stderr) <= 2, logged.stderr  # 1.2 s of work: the first draw, then nothing until 30 s

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    proc = subprocess.Popen([sys.executable, "-c", LOOP], stderr=follower, stdout=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    assert redraws(seen) >= 5, seen  # ten a second for 1.2 s, less the start-up
