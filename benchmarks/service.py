"""The gRPC service under measurement, each section against one ``metaprune serve`` process.

    .venv/bin/python benchmarks/service.py [--size-mb 200] [--repeats 3]
        [--sections hostile,memory,transfer,jobs] [--baseline /work/main] [--sink-threads N]

``--baseline TREE`` also runs the sections against a server started from another source
tree (``PYTHONPATH=TREE``, e.g. the main checkout: "before"), in the same run; one table
per tree is printed. Sections:

* ``hostile``: one token holds 64 ``WatchJob`` streams on a running job and 40 uploads
  that send their header and then nothing (this tree: caps raised to 64 / 40 for the run);
  meanwhile Health and GetServerInfo are called in turn for 15 s with a 2 s deadline:
  p50 / p99 latency and errors (target p99 <= 250 ms, no errors).
* ``memory``: four concurrent uploads of four different ~200 MB checkpoints: the server
  process's RSS before, at its peak and 2 s after (target: peak <= +100 MB, returned).
* ``transfer``: upload and download of a ~200 MB checkpoint against the raw byte stream on
  the same server, in the same run (``raw_bytes_rpc``: bare byte-streaming RPCs of the same
  server, behind the same interceptor: upload = the same file read in 1 MiB blocks and
  counted by the server; download = 1 MiB blocks from memory; no hash, no disk write, no
  check). Upload rows: ``client.upload`` with the sha256 known (in the header: the client
  only reads and sends) and ``client.upload`` as a user calls it (this tree: one pass, the
  client hashes on a thread while sending, the sha256 in an ``UploadTrailer``). The client
  is always this checkout's, also against a ``--baseline`` server (it speaks the same
  protocol), so a baseline row measures that tree's server. Download rows: the ``DownloadResult``
  stream alone, and ``client.download`` (client sha256 + file write). Target >= 0.8 of
  raw. Each row also gives the CPU seconds of the client (this process) and of the server
  process in its fastest repeat: on a 2-core machine the raw stream keeps both cores
  busy, so every CPU second added (a sha256 pass is ~0.2 s per 200 MB here) shows in the
  ratio. Each upload repeat deletes the model first, so every repeat stores it (fsync +
  rename) rather than finding it. Then the budget (this tree): the CPU seconds of each pass
  an upload or download makes over the file, measured alone in this process (client: read,
  framing; server: sha256, page-cache write, NaN/Inf scan; blake3 too if the package is
  installed, for comparison), the upload sink alone with 1 and 2 threads, and the ceiling
  of the rate they allow: size / max(the longest thread, all CPU seconds (the raw stream's
  and the passes') / this machine's cores). CPU seconds hardly depend on the machine's
  load, walls do: compare the ceiling with an idle machine's raw rate.
* ``jobs``: ``CreatePruneJob`` to the first progress event, RSS with 0 / 8 / 32 queued
  jobs, and Health while 8 jobs run on 2 workers.

The download needs a result: the benchmark copies the uploaded file into a finished job's
result directory (through the store, as a worker would), so the download path is measured
on 200 MB without pruning a 50 M-parameter model on a CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

# run as a script, this file's directory comes first on sys.path and "service" would be this
# file rather than the package: drop it
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from service._generated import pruning_service_pb2 as pb  # noqa: E402
from service._generated import pruning_service_pb2_grpc as pb_grpc  # noqa: E402
from service.blobs import AsyncHashingWriter, sha256_file  # noqa: E402
from service.client import PruningClient  # noqa: E402
from service.process import ServeProcess, serve_process  # noqa: E402
from service.scan import FiniteScan  # noqa: E402
from service.server import LoopThread  # noqa: E402
from service.store import Store  # noqa: E402
from service.testing import TOKENS, make_checkpoint, token_configs  # noqa: E402
from service.testing import tiny_config as _tiny_config  # noqa: E402
from service.wire import frame_chunk  # noqa: E402

TOKEN = TOKENS["alice"][0]
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MiB = 1024 * 1024
WATCHERS, SILENT, PROBE_SECONDS = 64, 40, 15.0
Row = tuple[str, str, str]


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """The tests' tiny job with the default normaliser search, as in this benchmark's
    earlier figures."""
    return _tiny_config(importance={"normalizer": "auto"}, **overrides)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class PeakRss:
    """Samples a process's RSS every 10 ms in a thread; ``peak`` is the maximum seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss_mb(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- hostile


async def _hold(address: str, job_id: str, header: pb.UploadHeader, stop: asyncio.Event,
                firsts: list[int], failed: dict[str, int]) -> None:  # fmt: skip
    """64 watchers (reading every message) and 40 silent uploads of one token, over 8
    connections, until ``stop``."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(8)]
    stubs = [pb_grpc.PruningServiceStub(c) for c in channels]

    def fail(kind: str, err: grpc.RpcError) -> None:
        if not stop.is_set():
            failed[f"{kind} {err.code().name}"] = failed.get(f"{kind} {err.code().name}", 0) + 1

    async def watch(i: int) -> None:
        try:
            async for _ in stubs[i % 8].WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=AUTH):
                firsts[i] = 1
        except grpc.RpcError as err:
            fail("watcher", err)

    async def silent() -> None:
        yield pb.UploadModelRequest(header=header)
        await stop.wait()

    async def upload(i: int) -> None:
        try:
            await stubs[i % 8].UploadModel(silent(), metadata=AUTH)
        except grpc.RpcError as err:
            fail("silent upload", err)

    tasks = [asyncio.create_task(watch(i)) for i in range(WATCHERS)]
    tasks += [asyncio.create_task(upload(i)) for i in range(SILENT)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()


def hostile(proc: ServeProcess, small: Path) -> list[Row]:
    # short deadlines and no retries: a jammed server must not stall the benchmark
    client = PruningClient(proc.address, TOKEN, timeout=5, retries=0)
    model = client.upload(small)
    job = client.create_job(model.model_id, "synthetic", tiny_config(after_pruning={"epochs": 200}))
    header = pb.UploadHeader(spec_json=model.spec_json, total_size=small.stat().st_size,
                             sha256=sha256_file(small))  # fmt: skip
    loop, firsts, failed = LoopThread(2, "bench-load"), [0] * WATCHERS, {}
    stop = asyncio.Event()
    held = asyncio.run_coroutine_threadsafe(
        _hold(proc.address, job.job_id, header, stop, firsts, failed), loop.loop)  # fmt: skip
    time.sleep(3.0)  # the streams open
    latencies: dict[str, list[float]] = {"Health": [], "GetServerInfo": []}
    errors: dict[str, int] = {}
    with grpc.insecure_channel(proc.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check
        info = pb_grpc.PruningServiceStub(channel).GetServerInfo
        calls = {"Health": lambda: health(health_pb2.HealthCheckRequest(), timeout=2.0),
                 "GetServerInfo": lambda: info(pb.GetServerInfoRequest(), metadata=AUTH,
                                               timeout=2.0)}  # fmt: skip
        end = time.monotonic() + PROBE_SECONDS
        while time.monotonic() < end:
            for name, call in calls.items():
                start = time.perf_counter()
                try:
                    call()
                except grpc.RpcError as err:
                    errors[f"{name} {err.code().name}"] = (
                        errors.get(f"{name} {err.code().name}", 0) + 1
                    )
                latencies[name].append(time.perf_counter() - start)
            time.sleep(0.02)
    try:
        state = pb.JobState.Name(client.get_job(job.job_id).state)
    except grpc.RpcError as err:
        state = f"unknown (GetJob: {err.code().name})"
    loop.loop.call_soon_threadsafe(stop.set)
    held.result(60)
    loop.close()
    with contextlib.suppress(grpc.RpcError):
        client.cancel_job(job.job_id)
    client.close()
    rows = []
    for name, values in latencies.items():
        rows.append((f"{name} with {WATCHERS} watchers + {SILENT} silent uploads (one token)",
                     f"p50 {1e3 * statistics.median(values):.1f} ms, p99 {1e3 * pct(values, 0.99):.0f} ms",
                     f"{len(values)} calls, errors: {sum(v for k, v in errors.items() if k.startswith(name)) or 0}"))  # fmt: skip
    rows.append(("watchers that got a message / load streams that failed",
                 f"{sum(firsts)} / {WATCHERS}; " + ("; ".join(f"{k}: {v}" for k, v in sorted(failed.items())) or "none"),
                 f"job {state} at the end; probe errors: " + ("; ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "none")))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- memory


def memory(proc: ServeProcess, files: list[Path]) -> list[Row]:
    pid, shas = proc.proc.pid, [sha256_file(f) for f in files]
    errors: list[BaseException] = []

    def one(path: Path, sha: str) -> None:
        try:
            with PruningClient(proc.address, TOKEN, timeout=600, chunk_bytes=MiB) as c:
                c.upload(path, sha256=sha)
        except BaseException as err:  # noqa: BLE001 (reported)
            errors.append(err)

    time.sleep(1.0)
    before = rss_mb(pid)
    with PeakRss(pid) as peak:
        threads = [threading.Thread(target=one, args=fs) for fs in zip(files, shas)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    time.sleep(2.0)
    after = rss_mb(pid)
    size = sum(f.stat().st_size for f in files) / len(files) / 1e6
    assert not errors, errors
    return [(f"server RSS, 4 concurrent {size:.0f} MB uploads: before / peak / 2 s after",
             f"{before:.0f} / {peak.peak:.0f} / {after:.0f} MB",
             f"peak +{peak.peak - before:.0f} MB, after +{after - before:.0f} MB")]  # fmt: skip


# --------------------------------------------------------------------------- transfer


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


Run = tuple[float, float, float]  # wall s, client CPU s, server CPU s


def timed(fn: Callable[[], None], pid: int, repeats: int) -> Run:
    """The fastest of ``repeats`` runs: (wall s, this process's CPU s, the server's CPU s)."""
    runs = []
    for _ in range(repeats):
        cpu, server, start = own_cpu(), cpu_seconds(pid), time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start, own_cpu() - cpu, cpu_seconds(pid) - server))
    return min(runs)


def raw_upload(channel: grpc.Channel, path: Path, sha: str | None = None) -> None:
    """The file's bytes, read in 1 MiB blocks, as a bare byte stream (the server counts
    them, or given the file's ``sha``, only hashes them on a sink thread): what any upload
    must at least cost."""

    def chunks():
        with open(path, "rb") as f:
            while block := f.read(MiB):
                yield block

    method = "UploadHashed" if sha else "Upload"
    reply = channel.stream_unary(f"/metaprune.bench.RawBytes/{method}")(chunks(), metadata=AUTH)
    assert reply == (sha or str(path.stat().st_size)).encode()


def raw_download(channel: grpc.Channel, size: int) -> None:
    call = channel.unary_stream("/metaprune.bench.RawBytes/Download")
    assert sum(len(b) for b in call(str(size).encode(), metadata=AUTH)) == size


def fake_result(data: Path, job_id: str, checkpoint: Path) -> None:
    """Make ``job_id`` a succeeded job whose result is ``checkpoint`` (see module doc)."""
    folder = data / "results" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, folder / "model.safetensors")
    (folder / "report.json").write_text(json.dumps({"note": "benchmark"}))
    store = Store(data / "metaprune.db")
    store.update_job(job_id, state="succeeded", result_sha256=sha256_file(checkpoint),
                     result_size=checkpoint.stat().st_size, finished_at=time.time())  # fmt: skip
    store.close()


def transfer(proc: ServeProcess, client: PruningClient, big: Path, data: Path, repeats: int,
             new: bool) -> list[Row]:  # fmt: skip
    """Each row: MB/s of the fastest repeat, its ratio to the raw stream's fastest repeat
    in the same section, and the CPU seconds of client / server in that repeat."""
    size, channel, pid, rows = big.stat().st_size, client.channel, proc.proc.pid, []
    sha = sha256_file(big)

    def row(name: str, run: Run, raw: Run) -> Row:
        return (name, f"{size / 1e6 / run[0]:.0f} MB/s vs raw {size / 1e6 / raw[0]:.0f} MB/s",
                f"ratio {raw[0] / run[0]:.2f}; CPU s client / server {run[1]:.2f} / {run[2]:.2f} "
                f"(raw {raw[1]:.2f} / {raw[2]:.2f})")  # fmt: skip

    model = client.upload(big, sha256=sha)

    def upload(known: bool) -> Callable[[], None]:
        def run() -> None:  # deleted first, so every repeat stores it (fsync + rename)
            with contextlib.suppress(grpc.RpcError):
                client.delete_model(model.model_id)
            client.upload(big, sha256=sha if known else None)

        return run

    raw_up = timed(lambda: raw_upload(channel, big), pid, repeats)
    if new:  # the floor of any upload that hashes what it stores
        rows.append(row("upload floor: the raw stream + one server sha256 pass (sink thread)",
                        timed(lambda: raw_upload(channel, big, sha), pid, repeats), raw_up))  # fmt: skip
    ups = [("upload: client.upload, sha256 known (header): server hash + write + checks", True),
           ("upload: client.upload in one pass (client hashes while sending, sha256 in a "
            "trailer)", False)]  # fmt: skip
    for name, known in ups:
        rows.append(row(name, timed(upload(known), pid, repeats), raw_up))

    job = client.create_job(model.model_id, "synthetic", tiny_config())
    client.cancel_job(job.job_id)
    client.watch(job.job_id)
    fake_result(data, job.job_id, big)
    raw_down = timed(lambda: raw_download(channel, size), pid, repeats)
    request = pb.DownloadResultRequest(job_id=job.job_id)
    call = getattr(client, "_download_call", client.stub.DownloadResult)  # main: protobuf stub

    def stream_only() -> None:
        got = 0
        for message in call(request, metadata=AUTH):
            got += len(message) if isinstance(message, memoryview) else len(message.chunk)
        assert got == size

    rows.append(row("download: DownloadResult stream (chunks counted)",
                    timed(stream_only, pid, repeats), raw_down))  # fmt: skip
    rows.append(row("download: client.download (+ client sha256 + file write)",
                    timed(lambda: client.download(job.job_id, data.parent / "down"), pid, repeats),
                    raw_down))  # fmt: skip
    assert sha256_file(data.parent / "down" / "model.safetensors") == sha
    if new:
        rows += budget(big, data.parent, raw_up, raw_down, repeats)
    return rows


# --------------------------------------------------------------------------- budget


def pass_costs(path: Path, scratch: Path, repeats: int) -> dict[str, float]:
    """CPU seconds of each pass over ``path``'s bytes (1 MiB blocks from memory, best of
    ``repeats``, this thread only), and the wall seconds of the upload sink alone."""
    data = path.read_bytes()
    blocks = [memoryview(data)[i : i + MiB] for i in range(0, len(data), MiB)]

    def read() -> None:
        with open(path, "rb") as f:
            while f.read(MiB):
                pass

    def digest(make: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            h = make()
            for block in blocks:
                h.update(block)

        return run

    def write() -> None:
        with open(scratch / "write", "wb") as f:
            for block in blocks:
                f.write(block)

    def scan() -> None:
        finite = FiniteScan(100 * MiB)
        for block in blocks:
            finite.feed(block)
        assert finite.complete and not finite.bad

    def sink(threads: int) -> Callable[[], None]:
        async def run() -> None:
            with open(scratch / "sink", "wb") as f:
                writer = AsyncHashingWriter(f, also=FiniteScan(100 * MiB).feed, threads=threads)
                try:
                    for block in blocks:
                        await writer.write(block)
                    await writer.finish()
                finally:
                    writer.close()

        return lambda: asyncio.run(run())

    def frame() -> None:
        for block in blocks:
            frame_chunk(block)

    passes = {"read": read, "frame": frame,
              "sha256": digest(hashlib.sha256), "write": write, "scan": scan}  # fmt: skip
    with contextlib.suppress(ImportError):
        import blake3  # optional, for comparison only

        passes["blake3"] = digest(blake3.blake3)
    costs = {}
    for name, fn in passes.items():
        costs[name] = min(_thread_cpu(fn) for _ in range(repeats))
    for threads in (1, 2):
        costs[f"sink{threads}"] = min(_wall(sink(threads)) for _ in range(repeats))
    (scratch / "write").unlink()
    (scratch / "sink").unlink()
    return costs


def _thread_cpu(fn: Callable[[], object]) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def _wall(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def budget(big: Path, scratch: Path, raw_up: Run, raw_down: Run, repeats: int) -> list[Row]:
    """What the passes cost and the ceiling of the upload and download rates they allow
    (see the module doc)."""
    c = pass_costs(big, scratch, repeats)
    cores = len(os.sched_getaffinity(0))
    names = ["read", "frame", "sha256", "blake3", "write", "scan"]
    rows = [(f"CPU s per {big.stat().st_size / 1e6:.0f} MB pass, alone in this process",
             " / ".join(f"{n} {c[n]:.3f}" for n in names if n in c),
             f"upload sink alone (sha256 + write + scan, from memory): wall {c['sink1']:.3f} s "
             f"on 1 thread, {c['sink2']:.3f} s on 2")]  # fmt: skip

    size = big.stat().st_size / 1e6

    def ceiling(name: str, raw: Run, client: float, server: float,
                chains: tuple[float, float]) -> Row:  # fmt: skip
        """The fastest rate the CPU seconds allow: all of them spread over the cores, and
        the longest thread (the sink's passes on 1 thread, or the longer half on 2)."""
        cpu, raw_rate = raw[1] + raw[2] + client + server, size / raw[0]
        rate = size / max(min(chains), cpu / cores)
        return (f"ceiling: {name}",
                f"{rate:.0f} MB/s on {cores} cores; {size / chains[0]:.0f} / "
                f"{size / chains[1]:.0f} MB/s with a core per thread, 1 / 2 sink threads",
                f"CPU s {cpu:.2f} (raw stream {raw[1] + raw[2]:.2f}); {rate / raw_rate:.2f} of "
                f"this run's raw ({raw_rate:.0f} MB/s)")  # fmt: skip

    store = c["write"] + c["scan"]
    digests = [("sha256", c["sha256"])] + ([("blake3", c["blake3"])] if "blake3" in c else [])
    for name, cost in digests + [("no digest", 0.0)]:
        label = "as built" if name == "sha256" else f"if the store used {name}"
        rows.append(ceiling(f"upload, sha256 known, {label}", raw_up, c["frame"], cost + store,
                            (cost + store, max(cost, store))))  # fmt: skip
    sha = c["sha256"]
    rows.append(ceiling("upload in one pass (the client hashes too)", raw_up, c["frame"] + sha,
                        sha + store, (sha + store, max(sha, store))))  # fmt: skip
    rows.append(ceiling("client.download (client sha256 + write; server framing)", raw_down,
                        sha + c["write"], c["frame"], (sha + c["write"], max(sha, c["write"]))))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- jobs


def jobs(proc: ServeProcess, client: PruningClient, small: Path) -> list[Row]:
    pid, rows = proc.proc.pid, []
    model = client.upload(small)
    firsts = []
    for i in range(5):
        start, first = time.perf_counter(), []
        job = client.create_job(model.model_id, "synthetic", tiny_config(seed=i))

        def on(j, e, first=first, start=start):  # noqa: ANN001
            if e is not None and not first:
                first.append(time.perf_counter() - start)

        client.watch(job.job_id, on)
        firsts.append(first[0])
    rows.append(("CreatePruneJob -> first progress event (warm worker)",
                 f"median {statistics.median(firsts):.3f} s", f"max {max(firsts):.3f} s over 5 jobs"))  # fmt: skip
    long, rss, queued = tiny_config(after_pruning={"epochs": 200}), {0: rss_mb(pid)}, []
    for n in (8, 32):
        while len(queued) < n:
            queued.append(client.create_job(model.model_id, "synthetic", long).job_id)
        time.sleep(1.0)
        rss[n] = rss_mb(pid)
    rows.append(("server RSS with 0 / 8 / 32 jobs queued",
                 " / ".join(f"{rss[n]:.0f}" for n in (0, 8, 32)) + " MB", "a queued job is a row"))  # fmt: skip
    for job_id in queued:
        client.cancel_job(job_id)
    ids = [client.create_job(model.model_id, "synthetic",
                             tiny_config(seed=i, after_pruning={"epochs": 3})).job_id
           for i in range(8)]  # fmt: skip
    latencies = []
    while any(client.get_job(j).state in (1, 2) for j in ids):
        for _ in range(20):
            t = time.perf_counter()
            assert client.health() == "SERVING"
            latencies.append(time.perf_counter() - t)
            time.sleep(0.02)
    rows.append(("Health while 8 jobs run on 2 workers",
                 f"p50 {1e3 * statistics.median(latencies):.1f} ms, p99 {1e3 * pct(latencies, 0.99):.1f} ms",
                 f"{len(latencies)} checks"))  # fmt: skip
    return rows


# --------------------------------------------------------------------------- main


def start_server(root: Path, tree: str | None, sink_threads: int = 0) -> ServeProcess:
    """``metaprune serve`` from this checkout (``tree`` None) or from ``tree``."""
    lines = ["raw_bytes_rpc = true", "max_jobs_per_token = 100", "max_queued_jobs = 100",
             "max_message_bytes = 4194304"]  # fmt: skip
    if tree is None:  # caps raised so one token can hold the hostile load (defaults 16 / 4)
        lines += [f"max_streams_per_token = {WATCHERS + 8}", f"max_uploads_per_token = {SILENT + 8}",
                  "upload_idle_seconds = 120", f"sink_threads = {sink_threads}"]  # fmt: skip
    for entry in token_configs():
        lines += ["[[tokens]]", *(f'{k} = "{v}"' for k, v in entry.items())]
    (root / "service.toml").write_text("\n".join(lines) + "\n")
    saved, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
    if tree is not None:  # "python -m" puts the working directory first: run from the tree
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tree, saved) if p)
        os.chdir(tree)
    try:
        return serve_process(root / "data", root / "service.toml", workers=2, timeout=180)
    finally:
        os.chdir(cwd)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def run(tree: str | None, root: Path, files: dict[str, Path], section: str,
        args: argparse.Namespace) -> list[Row]:  # fmt: skip
    """One section against a fresh server (the hostile load can leave a server jammed)."""
    root.mkdir(parents=True)
    proc = start_server(root, tree, args.sink_threads)
    try:
        client = PruningClient(proc.address, TOKEN, timeout=600, chunk_bytes=MiB)
        model = client.upload(files["small"])  # warm the server's imports and both workers
        client.watch(client.create_job(model.model_id, "synthetic", tiny_config()).job_id)
        if section == "hostile":
            rows = hostile(proc, files["small"])
        elif section == "memory":
            rows = memory(proc, [files[f"m{i}"] for i in range(4)])
        elif section == "transfer":
            rows = transfer(proc, client, files["big"], root / "data", args.repeats, tree is None)
        else:
            rows = jobs(proc, client, files["small"])
        client.close()
        with contextlib.suppress(Exception):
            proc.terminate(60)
    finally:
        proc.kill()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default="hostile,memory,transfer,jobs")
    parser.add_argument("--baseline", help="also run against a server from this source tree")
    parser.add_argument("--sink-threads", type=int, default=0,
                        help="this tree's server: threads per upload sink (0 = auto)")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="metaprune-bench-") as tmp:
        root = Path(tmp)
        width = (args.size_mb * MiB / 4 / 272_186) ** 0.5  # cifar_resnet20: 272k params at 1
        files = {"small": make_checkpoint(root / "small.safetensors")}
        sections = args.sections.split(",")
        if "transfer" in sections:
            files["big"] = make_checkpoint(root / "big.safetensors", width=width)
        if "memory" in sections:
            for i in range(4):
                files[f"m{i}"] = make_checkpoint(
                    root / f"m{i}.safetensors", width=width, seed=i + 1
                )
        size = files.get("big", files["small"]).stat().st_size
        for name, tree in (("this checkout", None), (f"baseline {args.baseline}", args.baseline)):
            if name.startswith("baseline") and tree is None:
                continue
            rows = []
            for section in sections:
                rows += run(tree, root / f"{'base' if tree else 'this'}-{section}", files, section,
                            args)  # fmt: skip
            print(f"\n{name} ({size / 1e6:.0f} MB checkpoint)\n\n| measure | figure | note |\n"
                  "|---|---|---|", flush=True)  # fmt: skip
            for row in rows:
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
