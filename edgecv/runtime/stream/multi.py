"""``edgecv run BUNDLE --source A --source B ...``: several cameras, one engine call per batch.

One capture thread per camera keeps its newest frame (live cameras and ``--realtime`` replays drop what the
model had no time for, as a camera would; unpaced files and folders hand over every frame). An inference
worker batches the frames available, one per camera, into a single engine call, the way DeepStream's
nvstreammux does: it waits for every live camera's next frame at most a push timeout (1/fps) after the first
one arrived, then runs what it has. On a CPU backend several single-threaded workers (one engine instance
each, one per core by default) run rounds side by side; one gathers while the others infer, and results are
written in capture order. JSON lines carry the camera id, its frame number, the capture time, the
frame's age at inference and the latency; the summary has per-camera frames, drops, stale frames,
reconnects and p50/p99 age. One camera's failure never stops the others.

When no source is live (unpaced files and folders, every frame handed over) and preprocessing runs on the CPU,
there are no capture threads: each worker reads its round itself, one frame per camera under a shared read
lock, straight into its batch, then runs it. Four capture threads beside two engine workers on 2 cores cost
about 9 context switches per frame (21,500 for 2,400 frames, against 1,000 read inline), each one evicting the
engine's working set mid-call: Lite0 int8, 4 VGA clips, 376-382 frames/s with capture threads against 407-436
read inline (tools/multicam_bench.py).
"""
from __future__ import annotations

import json
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from edgecv.runtime.backends.base import usable_cores
from edgecv.runtime.classifier import Classifier, Smoother
from edgecv.runtime.latency import percentiles
from edgecv.runtime.stream.cameras import Camera, CameraThread
from edgecv.runtime.stream.loop import reject_unsure
from edgecv.runtime.stream.options import RunOptions
from edgecv.runtime.stream.outputs import file_field, image_line
from edgecv.runtime.stream.sources import FrameSource
from edgecv.utils.signals import INTERRUPTS, Terminated

# The most frames one round holds. More cameras take turns. Each batch size is warmed up (OpenVINO compiles one
# model per size) before the cameras start: 100 cameras used to mean 100 compiled models per worker, and no frame
# within 120 s. On this 2-core CPU batching gains 1.06-1.12x at batch 4 and nothing more beyond it.
ROUND_MAX = 8


def _keep_frame(frame):
    return frame


def plan_workers(requested: Optional[int], threads: Optional[int], n_cams: int) -> Tuple[int, Optional[int]]:
    """``(inference workers, threads per worker)`` for a CPU backend.

    ``requested`` None (auto): one single-threaded worker per core the threads may use (``threads``, else the
    cores this process may run on), at most one per camera. Each worker batches the frames it takes into one
    call of its own engine instance, so the cores run batched calls side by side. Lite0 int8 on OpenVINO, 2
    cores, engine alone: two 1-thread workers at batch 2 gave 551 frames/s, one 2-thread engine at batch 4 gave
    494 and two 1-thread workers at batch 1 (what separate processes do) 452 (tools/multicam_bench.py measures
    the whole loop).
    """
    if requested is not None and requested < 1:
        raise ValueError(f"infer_workers must be >= 1, got {requested}")
    total = threads or usable_cores()
    workers = min(n_cams, requested if requested is not None else total)
    workers = max(1, workers)
    if workers == 1:
        return 1, threads
    return workers, max(1, total // workers)


class _Rounds:
    """What the inference workers share: the cameras, the frame budget, the output order and the statistics.

    A worker takes a round of frames (one per camera, nvstreammux-style) under the cameras' lock and gets a
    ticket; results are written in ticket order, so each camera's lines, smoothing and frame numbers follow
    capture order whichever worker finishes first.
    """

    def __init__(self, cameras: List[Camera], o: RunOptions, n_max: int, workers: int, clf, emit, notifier):
        self.threads: List[CameraThread] = []  # filled by the caller
        self.wake = threading.Condition()  # the cameras' lock: a camera thread wakes a gathering worker
        self.o, self.n_max, self.clf, self.emit, self.notifier = o, n_max, clf, emit, notifier
        self.push_timeout = 1.0 / (o.fps or 30.0)
        self.order = threading.Condition()
        self.inline = False  # the workers read the sources themselves (``_read_round``)
        self.turn = 0  # the camera a round starts from (``_in_turn``)
        self.read_lock = threading.Lock()
        self.stop = False
        self.collecting = False  # a worker is gathering the next round
        self.reserved = 0  # frames taken and not (yet) found stale: what max_frames counts against
        self.total = 0
        self.next_ticket = self.next_out = 0
        self.busy_since: List[Optional[float]] = [None] * workers
        self.fatal: Optional[BaseException] = None
        self.stats = {c.id: {"frames": 0, "stale": 0, "unknown": 0, "ages": []} for c in cameras}
        self.smoothers = {c.id: Smoother(o.smooth) for c in cameras}
        self.batches: List[int] = []
        self.lat: List[float] = []
        self.worker_frames = [0] * workers
        self.wall_offset = time.time() - time.monotonic()
        self.helpers: List[threading.Thread] = []

    def healthy(self) -> bool:
        """No worker has been inside one engine call for half a watchdog interval: a hung engine in any worker
        stops the pings, so systemd restarts the service."""
        limit = self.notifier.interval
        now = time.monotonic()
        return limit is None or all(b is None or now - b < limit for b in self.busy_since)

    def ping(self) -> None:
        if self.healthy():
            self.notifier.ping()

    def _room(self) -> int:
        o = self.o
        return self.n_max if o.max_frames is None else min(self.n_max, o.max_frames - self.reserved)

    def _take(self):
        """The next round's frames and its ticket (under the cameras' lock); None when the run is over."""
        o, threads, wake = self.o, self.threads, self.wake
        with wake:
            while True:
                if self.stop or (o.max_frames is not None and self.total >= o.max_frames):
                    return None
                if not self.collecting and self._room() > 0 and any(t.latest is not None for t in threads):
                    # nvstreammux: every camera still delivering gets up to the push timeout to join. One worker
                    # at a time gathers a round: two gathering at once split each round in two.
                    self.collecting = True
                    try:
                        # from the oldest waiting frame's capture time, and short of a frame interval: a camera
                        # whose next frame lands before the round closes loses the frame it had waiting
                        first = min(t.latest[1] for t in threads if t.latest is not None)
                        deadline = min(time.monotonic() + self.push_timeout, first + 0.75 * self.push_timeout)
                        while (time.monotonic() < deadline and not self.stop
                               and not any(t.urgent for t in threads)
                               and not all(t.latest is not None or t.done for t in threads)):
                            wake.wait(max(0.0, deadline - time.monotonic()))
                    finally:
                        self.collecting = False
                    wake.notify_all()
                    room = self._room()
                    if room > 0 and any(t.latest is not None for t in threads):
                        break
                    continue
                if all(t.done for t in threads) and not any(t.latest is not None for t in threads):
                    return None
                wake.wait(0.1)  # short steps: Ctrl-C stays responsive
            taken = []
            for k, t in self._in_turn():
                if len(taken) == room:
                    break
                item = t.take()
                if item is not None:
                    taken.append((t, *item))
                    self.turn = k + 1
            return self._issue(taken)

    def _in_turn(self) -> List[Tuple[int, CameraThread]]:
        """``(index, camera)`` from the one after the last served: with more cameras than a round holds, each gets
        its turn (from the first camera every time, cameras past the round's size were never classified)."""
        n = len(self.threads)
        return [((self.turn + i) % n, self.threads[(self.turn + i) % n]) for i in range(n)]

    def _issue(self, taken):
        """A round's ticket and its fresh rows ``(camera, item, capture time, age ms, file name)`` from ``(camera,
        item, capture time, file name)``, where the item is the camera's tensor (``_take``) or its row in the batch
        (``_read_round``): frames over the age budget are counted stale, the others reserved against the budget."""
        now, limit = time.monotonic(), self.o.max_age_ms
        fresh = []
        for t, tensor, stamp, name in taken:
            age = (now - stamp) * 1e3
            if limit is not None and age > limit:
                self.stats[t.cam.id]["stale"] += 1
            else:
                fresh.append((t, tensor, stamp, age, name))
        self.reserved += len(fresh)
        ticket = self.next_ticket
        self.next_ticket += 1
        return ticket, fresh

    def _read_round(self, x: np.ndarray):
        """``_take`` for a loop without capture threads: the next frame of every camera, read and preprocessed
        into ``x`` under the read lock (rounds leave it in capture order), and its ticket; None when the run is
        over."""
        while True:
            with self.read_lock:
                room = self._room()
                if self.stop or room <= 0:
                    return None
                got = []
                for k, t in self._in_turn():
                    if len(got) == room:
                        break
                    self.turn = k + 1
                    frame = t.read_inline()
                    # under the lock, right after decoding: preprocessing four decoded VGA frames after
                    # releasing it measured 3% slower (401 vs 414 frames/s), the frames gone cold in cache
                    if frame is not None and t.preprocess_into(frame, x[len(got)]):
                        got.append((t, len(got), t.src.frame_time, t.src.frame_name))  # its row in x
                if got:
                    ticket, fresh = self._issue(got)
                    for j, (_t, i, _stamp, _age, _name) in enumerate(fresh):
                        if i != j:
                            x[j] = x[i]  # a stale frame's row is dropped: the batch stays contiguous
                    return ticket, [(t, None, stamp, age, name) for t, _i, stamp, age, name in fresh]
                if all(t.done for t in self.threads):
                    return None
            self.ping()  # every source is waiting to reconnect: the loop itself is alive
            time.sleep(0.02)

    def work(self, k: int, clf, x: np.ndarray) -> None:
        """One inference worker's loop: take a round, run it through this worker's engine, write it in order."""
        be, gpu_pre = clf.backend, clf.gpu_pre
        while True:
            got = self._read_round(x) if self.inline else self._take()
            if got is None:
                return
            ticket, rows = got
            logits, ms = None, 0.0
            if rows:
                for i, (_cam, tensor, _stamp, _age, _name) in enumerate(rows):
                    if tensor is None:
                        continue  # read into its batch row already
                    if gpu_pre is not None:
                        gpu_pre(tensor, i)  # a decoded frame: resized and normalised on the GPU
                    else:
                        x[i] = tensor
                self.busy_since[k] = time.monotonic()
                t0 = time.perf_counter()
                logits = be.infer_device(len(rows)) if gpu_pre is not None else be.infer(x[: len(rows)])
                ms = (time.perf_counter() - t0) * 1e3
                self.busy_since[k] = None
            with self.order:
                while self.next_out != ticket and not self.stop:
                    self.order.wait(0.1)
                if self.stop:
                    return
                try:
                    if rows:
                        self._write(rows, logits, ms)
                        self.worker_frames[k] += len(rows)
                finally:
                    self.next_out += 1
                    self.order.notify_all()
            self.ping()

    def _write(self, rows, logits: np.ndarray, ms: float) -> None:
        o = self.o
        self.batches.append(len(rows))
        self.lat.append(ms)
        for i, (t, _tensor, stamp, age, name) in enumerate(rows):
            st = self.stats[t.cam.id]
            pred = self.clf.predictions(logits[i], o.topk, self.smoothers[t.cam.id])[0]
            st["unknown"] += reject_unsure(pred, o.min_score)
            st["ages"].append(age)
            if o.as_json:
                self.emit(json.dumps({"camera": t.cam.id, "frame": st["frames"], **file_field(name),
                                      "label": pred.label, "index": pred.index, "score": pred.score,
                                      "capture_time": round(stamp + self.wall_offset, 6),
                                      "age_ms": round(age, 3), "batch": len(rows), "latency_ms": round(ms, 4)}))
            elif name is not None:
                self.emit(image_line(name, pred, t.cam.id))
            st["frames"] += 1
            self.total += 1
        if o.max_frames is not None:
            with self.wake:  # a worker waiting for the last frames in flight re-checks the budget
                self.wake.notify_all()
        self.notifier.ready(f"classifying {len(self.stats)} cameras")

    def halt(self) -> None:
        self.stop = True
        with self.wake:
            self.wake.notify_all()
        with self.order:
            self.order.notify_all()


def _open_workers(target, o: RunOptions, n_cams: int) -> Tuple[List[Classifier], Optional[int]]:
    """The classifiers (the first, then one more engine instance per extra inference worker, same artefact) and the
    threads per worker. Several workers only where the engine runs on the CPU; on the GPU, the camera threads hand
    over decoded frames and the kernel writes each into its batch row."""
    workers, per = plan_workers(o.infer_workers, o.threads, n_cams)
    first = Classifier(target, o.backend, o.precision, o.resize, per, o.dla_core, o.gpu_preprocess)
    clfs = [first]
    try:
        if first.gpu_pre is not None or not first.backend.runs_on_cpu:
            if o.infer_workers is not None and o.infer_workers > 1:
                raise ValueError(f"--infer-workers {o.infer_workers}: several inference workers are for CPU "
                                 f"backends; {first.info['backend']} runs on a GPU (one engine call per round)")
            workers, per = 1, o.threads
        clfs += [first.sibling(per) for _ in range(workers - 1)]
    except BaseException:
        for c in clfs:
            c.close()
        raise
    return clfs, per


def _open_together(threads: List[CameraThread], gate: threading.Event, open_s: float, read_s: float) -> None:
    """Start the ``--realtime`` replays' clocks once every source has opened (or failed; at most ``open_s`` and
    half ``read_s``), with each replay's preprocessing already set up for its frame size.

    Six VGA replays on 2 cores had their first frames 100-130 ms old at the first round, stale before the loop
    ran: six first calls of the resize set-up at once. With this, 6 cameras x 300 frames: 0 stale, 0-1 dropped,
    p99 age 13-17 ms (were 0-5 stale, 8-11 dropped). Live cameras are not held: their clock is the world's."""
    replays = [t for t in threads if t.src.realtime and t.src.kind in ("file", "folder")]
    end = time.monotonic() + min(open_s, 0.5 * read_s)  # a held replay must not time out its own reads
    try:
        while time.monotonic() < end and not all(t.src.opened.is_set() or t.done for t in replays):
            time.sleep(0.01)
        for t in replays:
            size = t.src.frame_size() if t.src.kind == "file" else None
            if size is not None and not t.done:  # its reader waits for the gate: the camera thread is idle
                t.pre(np.zeros((*size, 3), np.uint8))
    finally:
        gate.set()


def _camera_threads(cameras: List[Camera], rounds: "_Rounds", clf: Classifier, gate: threading.Event):
    """One CameraThread per camera, each with its own source and preprocessing (a source that cannot be opened is
    that camera's error when it is read)."""
    from edgecv.runtime.preprocess import Preprocessor

    o = rounds.o
    for cam in cameras:
        src = FrameSource(cam.source, o.source_options(loop=cam.loop, realtime=cam.realtime, fps=cam.fps,
                                                       decode_threads=o.decode_threads or 1),
                          heartbeat=rounds.ping, start_gate=gate)  # no ping while an engine hangs
        pre = _keep_frame if clf.gpu_pre is not None else Preprocessor(clf.bundle.preprocess, o.resize)
        rounds.threads.append(CameraThread(cam, src, rounds.wake, pre, hold_s=0.5 / (cam.fps or o.fps or 30.0)))


def run_multi(target, cameras: List[Camera], options: Optional[RunOptions] = None,
              emit: Optional[Callable[[str], None]] = None) -> Dict:
    """Classify several cameras, one batched engine call per round and worker; returns the summary."""
    from edgecv.runtime.stream.notify import Notifier

    o = (options or RunOptions()).check()
    if o.record or o.display:
        raise ValueError("--record and --display take one source")
    ids = [c.id for c in cameras]
    if not cameras or len(set(ids)) != len(ids):
        raise ValueError(f"cameras need unique ids, got {ids}")
    clfs, per_worker = _open_workers(target, o, len(cameras))
    n_max = min(len(cameras), clfs[0].backend.max_batch or ROUND_MAX, ROUND_MAX)
    notifier, gate = Notifier(), threading.Event()
    rounds = _Rounds(cameras, o, n_max, len(clfs), clfs[0], emit or (lambda s: print(s, flush=True)), notifier)
    try:
        xs = [c.input_batch(n_max) for c in clfs]
        for c in clfs:
            c.warm_up(n_max)  # every batch size a round can have, before the cameras start
        _camera_threads(cameras, rounds, clfs[0], gate)
    except BaseException:
        notifier.close()
        for c in clfs:
            c.close()
        raise
    rounds.inline = clfs[0].gpu_pre is None and not any(t.src.live for t in rounds.threads)
    try:
        interrupted, elapsed = _run_workers(rounds, clfs, xs, gate)
    finally:
        _teardown(rounds, clfs, gate, notifier)
    if rounds.fatal is not None:
        raise rounds.fatal
    return _summary(rounds, clfs, per_worker, elapsed, interrupted)


def _run_workers(rounds: "_Rounds", clfs: List[Classifier], xs, gate: threading.Event):
    """Run the workers until the sources end, Ctrl-C or SIGTERM; ``(interrupted, seconds spent classifying)``."""
    def helper(k: int) -> None:
        try:
            rounds.work(k, clfs[k], xs[k])
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            rounds.fatal = rounds.fatal or e
            rounds.halt()

    o = rounds.o
    helpers = [threading.Thread(target=helper, args=(k,), daemon=True, name=f"inference {k}")
               for k in range(1, len(clfs))]
    rounds.helpers = helpers
    cv_threads = cv2.getNumThreads()
    if clfs[0].backend.runs_on_cpu:
        cv2.setNumThreads(1)
    interrupted, t_start = None, time.perf_counter()
    try:
        if not rounds.inline:
            for t in rounds.threads:
                t.start()
            _open_together(rounds.threads, gate, o.open_timeout_s, o.read_timeout_s)
        for h in helpers:
            h.start()
        rounds.work(0, clfs[0], xs[0])  # the main thread is a worker: Ctrl-C and SIGTERM arrive here
        for h in helpers:  # the sources ended: the other workers still write the rounds they hold
            while h.is_alive():
                h.join(0.1)
    except INTERRUPTS as e:
        interrupted = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
    finally:
        # frames/s counts the time spent classifying, not the teardown: releasing two engines' compiled models took
        # about 0.1 s here, 2% of a 2,400-frame run
        elapsed = time.perf_counter() - t_start
        cv2.setNumThreads(cv_threads)
    return interrupted, elapsed


def _teardown(rounds: "_Rounds", clfs: List[Classifier], gate: threading.Event, notifier) -> None:
    rounds.halt()
    gate.set()  # a replay still held at the gate lets its camera thread see the stop
    for h in rounds.helpers:
        if h.ident is not None:
            h.join(timeout=10)
    for t in rounds.threads:
        t.stop.set()
    with rounds.wake:
        rounds.wake.notify_all()
    for t in rounds.threads:
        if t.ident is not None:
            t.join(timeout=3)
        t.src.close()
    notifier.stopping()
    notifier.close()
    for c in clfs:
        c.close()


def _summary(rounds: "_Rounds", clfs: List[Classifier], per_worker, elapsed: float, interrupted) -> Dict:
    per_cam = {}
    for t in rounds.threads:
        st = rounds.stats[t.cam.id]
        per_cam[t.cam.id] = {"source": t.cam.source, "frames": st["frames"], "dropped": t.dropped + t.src.dropped,
                             "stale": st["stale"], "unknown": st["unknown"], "reconnects": t.src.reconnects,
                             "skipped": t.src.skipped, "error": t.error,
                             "age_ms": percentiles(st["ages"]) if st["ages"] else None}
    errors = [f"{c}: {v['error']}" for c, v in per_cam.items() if v["error"]]
    batches, lat, info = rounds.batches, rounds.lat, clfs[0].info
    return {"frames": rounds.total, "fps": rounds.total / elapsed if elapsed else 0.0, "cameras": per_cam,
            "batches": len(batches), "mean_batch": float(np.mean(batches)) if batches else 0.0,
            "workers": len(clfs), "threads_per_worker": per_worker, "frames_per_worker": rounds.worker_frames,
            "backend": info["backend"], "artifact": info["file"], "precision": info.get("precision"),
            "preprocess": "gpu" if clfs[0].gpu_pre is not None else "cpu",
            "capture": "read by the inference workers" if rounds.inline else "one thread per camera",
            "interrupted": interrupted, "error": "; ".join(errors) if errors and len(errors) == len(rounds.threads)
            else None, "camera_errors": errors, "latency_ms": {"infer_batch": percentiles(lat)} if lat else {},
            "dropped": sum(v["dropped"] for v in per_cam.values()),
            "stale": sum(v["stale"] for v in per_cam.values()),
            "reconnects": sum(v["reconnects"] for v in per_cam.values())}
