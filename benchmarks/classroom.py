"""Classroom load: N concurrent sessions of the real app, each running P predictions with attention.

Two scenarios run one after the other on the same server (the free one first, so neither finds the
other's sentences among the shared results):

* free: every session types its own sentences (demo-corpus sentences, last word masked): no two
  requests are alike, so only batching the forward passes of simultaneous requests helps;
* teacher-led: every session types the same five sentences (the teacher's, from the cloze set): the
  shared results answer all but the first request for each.

The real app (``app.py``; its default page is Explore, on the default model) runs in its own
process, started the way ``streamlit run app.py`` starts it, with the project's
``.streamlit/config.toml``. N lightweight Streamlit websocket clients then use it at once: each
sends and receives what a browser tab does (protobuf BackMsg/ForwardMsg on ``/_stcore/stream``)
without rendering anything, so thirty "tabs" do not eat the cores the server needs. Each session

1. opens a link naming a sentence and an attention view (``/?text=...&view=Rollout``), like a
   student opening the teacher's link, then
2. types P-1 more sentences into the text box: a rerun request carrying the text box's new value,
   as the browser sends it (a browser also repeats the other widgets' values; the server keeps
   them anyway).

Every run of the Explore page predicts the masks and draws the chosen attention view. All the
sessions connect first, then start together ("now try it"), with no pause between predictions
unless ``--think`` asks for one. A prediction's latency runs from sending the request to the
server's "script finished" message; it counts as an error when the page shows an exception or
an error box, lacks the attention chart, or does not finish within ``--timeout`` seconds.

The server process is measured from outside (psutil): RSS when idle, after a warm-up session
(model loaded: the level the load starts from), its peak during the load, and ``--settle``
seconds after every session closed. Model copies are counted inside the server, which answers
on its stdin: the entries of mlm_core's shared model cache (``loaded_model_count()``) and every
live transformers model object the garbage collector can find.

    python benchmarks/classroom.py [--sessions 30] [--predictions 5] [--port 0] [--think 0] [--settle 10]
                                   [--server-threads N]   # a what-if: torch threads in the server

Goals: no errors, one model copy, p95 latency under 3 s in the free scenario and under 1 s in the
teacher-led one, on a 2-core CPU. Lower is better: the last line is ``ratio: free p95 latency / 3 s``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import queue
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._results import Printer, machine, write_result  # noqa: E402

GOAL_P95_S = 3.0  # the goal for a class of 30 on a 2-core machine, every session typing its own sentences
TEACHER_GOAL_P95_S = 1.0  # the goal when the whole class types the teacher's sentences (shared results)
VIEWS = ("One head", "Mean over heads", "Rollout", "From the mask", "All heads of a layer")
PROBE_PREFIX = "classroom-probe: "
MB = 2**20


# --------------------------------------------------------------------------- server side (--serve)


def probe() -> dict:
    """What the server holds: model copies, sessions, threads (runs in the server process)."""
    import gc

    from mlm_core.model.loading import loaded_model_count

    answer: dict = {"cache_models": loaded_model_count(), "live_models": None, "sessions": None}
    transformers = sys.modules.get("transformers")
    if transformers is not None:  # not imported yet: no model can exist
        # The app freezes its long-lived heap (ui.models), and gc.get_objects() does not list frozen objects:
        # thaw it, collect, count, and freeze what is alive again, as the app had it.
        frozen = gc.get_freeze_count() > 0
        if frozen:
            gc.unfreeze()
            gc.collect()
        models = [o for o in gc.get_objects() if isinstance(o, transformers.PreTrainedModel)]
        if frozen:
            gc.freeze()
        # BertForMaskedLM holds a BertModel, itself a PreTrainedModel: count only the outermost.
        inner = {id(m) for model in models for m in model.modules() if m is not model}
        answer["live_models"] = sum(id(m) not in inner for m in models)
    else:
        answer["live_models"] = 0
    torch = sys.modules.get("torch")
    if torch is not None:
        # torch's thread count belongs to each OS thread (OpenMP): app.py sets it in every script run's
        # thread, so ask the app's rule rather than this probe thread's own setting.
        from mlm_core.model.loading import use_app_threads

        answer["torch_threads"] = use_app_threads()
        answer["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        answer["torch"] = torch.__version__
    try:
        import streamlit
        from streamlit import config
        from streamlit.runtime import Runtime

        manager = Runtime.instance()._session_mgr  # no public API lists the sessions
        answer["sessions"] = {"held": len(manager.list_sessions()),
                              "active": len(manager.list_active_sessions())}
        answer["session_ttl_s"] = config.get_option("server.disconnectedSessionTTL")
        answer["streamlit"] = streamlit.__version__
    except Exception as exc:  # the figures above still stand; say why this one is missing
        answer["sessions_error"] = repr(exc)
    if transformers is not None:
        answer["transformers"] = transformers.__version__
    return answer


def answer_probes() -> None:
    for line in sys.stdin:
        if line.strip() == "probe":
            try:
                reply = probe()
            except Exception as exc:  # report it rather than leave the benchmark waiting
                reply = {"error": repr(exc)}
            print(PROBE_PREFIX + json.dumps(reply), flush=True)


def serve(port: int, torch_threads: int | None) -> None:
    """Run app.py as ``streamlit run app.py --server.port PORT --server.headless true`` does."""
    from streamlit.web import bootstrap

    if torch_threads:  # a what-if for the server's configuration (mlm_core.model.loading.use_app_threads)
        os.environ["MASKLAB_TORCH_THREADS"] = str(torch_threads)
    os.chdir(ROOT)  # .streamlit/config.toml is read from the working directory
    threading.Thread(target=answer_probes, daemon=True, name="classroom-probe").start()
    flags = {"server_port": port, "server_address": "127.0.0.1", "server_headless": True}
    bootstrap.load_config_options(flags)
    bootstrap.run(str(ROOT / "app.py"), False, [], flags)


# --------------------------------------------------------------------------- the server, seen from outside


class Server:
    """The app in a child process: start, health check, RSS, probes, stop."""

    def __init__(self, port: int, torch_threads: int | None = None) -> None:
        self.port = port
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self.replies: queue.Queue[dict] = queue.Queue()
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", "--port", str(port),
             *(["--server-threads", str(torch_threads)] if torch_threads else [])],
            cwd=ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read_output, daemon=True).start()
        import psutil

        self.ps = psutil.Process(self.process.pid)

    def _read_output(self) -> None:
        for line in self.process.stdout:
            if line.startswith(PROBE_PREFIX):
                self.replies.put(json.loads(line[len(PROBE_PREFIX):]))
            else:
                self.log.append(line.rstrip())

    def wait_ready(self, timeout: float = 180) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.process.poll() is not None:
                log = "\n".join(self.log)
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{log}")
            health = f"http://127.0.0.1:{self.port}/_stcore/health"
            try:
                with urllib.request.urlopen(health, timeout=2) as reply:
                    if reply.read().strip() == b"ok":
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s:\n" + "\n".join(self.log))

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def probe(self) -> dict:
        self.process.stdin.write("probe\n")
        self.process.stdin.flush()
        return self.replies.get(timeout=120)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # Streamlit shuts down cleanly on SIGTERM
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return probe_socket.getsockname()[1]


# --------------------------------------------------------------------------- one browser tab


@dataclass
class Run:
    """One prediction as the session saw it."""

    seconds: float | None = None  # None: it never finished
    problems: list[str] = field(default_factory=list)
    filled: str = ""


class Session:
    """A Streamlit websocket client that behaves like one browser tab on the Explore page."""

    def __init__(self, port: int, timeout: float) -> None:
        self.url = f"ws://127.0.0.1:{port}/_stcore/stream"
        self.origin = f"http://127.0.0.1:{port}"
        self.timeout = timeout
        self.ws = None
        self.query = ""
        self.page_hash = ""
        self.text_widget_id: str | None = None

    async def connect(self) -> None:
        from websockets.asyncio.client import connect

        # The first subprotocol is the one the server selects; the browser sends "streamlit".
        self.ws = await connect(self.url, subprotocols=["streamlit"], origin=self.origin, max_size=None,
                                open_timeout=self.timeout)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def open_link(self, text: str, view: str) -> Run:
        from streamlit.proto.ClientState_pb2 import ClientState

        self.query = urlencode({"text": text, "view": view})
        return await self._run(ClientState(query_string=self.query, page_script_hash=self.page_hash))

    async def type_text(self, text: str) -> Run:
        from streamlit.proto.ClientState_pb2 import ClientState
        from streamlit.proto.WidgetStates_pb2 import WidgetState, WidgetStates

        if self.text_widget_id is None:
            return Run(problems=["the page showed no text box to type into"])
        typed = WidgetStates(widgets=[WidgetState(id=self.text_widget_id, string_value=text)])
        return await self._run(ClientState(query_string=self.query, page_script_hash=self.page_hash,
                                           widget_states=typed))

    async def _run(self, state) -> Run:
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        run = Run()
        request = BackMsg()
        request.rerun_script.CopyFrom(state)
        attention_chart = False
        start = time.perf_counter()
        await self.ws.send(request.SerializeToString())
        try:
            while True:
                message = ForwardMsg()
                message.ParseFromString(await asyncio.wait_for(self.ws.recv(), self.timeout))
                kind = message.WhichOneof("type")
                if kind == "new_session":
                    self.page_hash = message.new_session.page_script_hash
                elif kind == "page_info_changed":
                    self.query = message.page_info_changed.query_string
                elif kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                    attention_chart |= self._read_element(message.delta.new_element, run)
                elif kind == "script_finished":
                    status = message.script_finished
                    if status == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                        continue  # st.rerun(): the page runs again and finishes later
                    if status == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                        run.problems.append("the page failed to compile")
                    break
        except TimeoutError:
            run.problems.append(f"no answer within {self.timeout:.0f} s")
            return run
        except Exception as exc:  # a dropped connection is an error of this prediction, not of the benchmark
            run.problems.append(f"connection: {exc!r}")
            return run
        run.seconds = time.perf_counter() - start
        if not attention_chart and not run.problems:
            run.problems.append("no attention chart on the page")
        return run

    def _read_element(self, element, run: Run) -> bool:
        """Note problems and the text box; True for the attention chart."""
        kind = element.WhichOneof("type")
        if kind == "exception":
            run.problems.append(f"exception {element.exception.type}: {element.exception.message[:200]}")
        elif kind == "alert" and element.alert.format == element.alert.ERROR:
            run.problems.append(f"error box: {element.alert.body[:200]}")
        elif kind == "text_area":
            self.text_widget_id = element.text_area.id
        elif kind == "markdown" and element.markdown.body.startswith("**Filled in:**"):
            shown = element.markdown.body.removeprefix("**Filled in:**").strip()
            run.filled = re.sub(r"\\(.)", r"\1", shown)  # the page escapes Markdown; keep the plain text
        return kind == "plotly_chart" and element.plotly_chart.id.endswith("xa-chart")


async def one_student(port: int, sentences: list[str], view: str, go: asyncio.Event, think: float,
                      timeout: float, ready: list) -> list[Run]:
    session = Session(port, timeout)
    try:
        began = time.perf_counter()
        await session.connect()
        ready.append(time.perf_counter() - began)
    except Exception as exc:
        ready.append(None)
        return [Run(problems=[f"could not connect: {exc!r}"]) for _ in sentences]
    runs = []
    try:
        await go.wait()
        for n, text in enumerate(sentences):
            if n and think:
                await asyncio.sleep(think)
            runs.append(await (session.open_link(text, view) if n == 0 else session.type_text(text)))
    finally:
        await session.close()
    return runs


async def sample_rss(server: Server, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], server.rss())
        with contextlib.suppress(TimeoutError):  # the sampling period: wake up to sample again
            await asyncio.wait_for(stop.wait(), 0.2)


async def classroom(server: Server, plan: list[list[str]], think: float, timeout: float):
    go, stop = asyncio.Event(), asyncio.Event()
    ready: list = []
    peak = [server.rss()]
    sampler = asyncio.create_task(sample_rss(server, peak, stop))
    students = [
        asyncio.create_task(one_student(server.port, texts, VIEWS[n % len(VIEWS)], go, think, timeout, ready))
        for n, texts in enumerate(plan)
    ]
    while len(ready) < len(plan):  # everybody has the page open, then "now try it"
        await asyncio.sleep(0.05)
    cpu_before, began = server.cpu_seconds(), time.perf_counter()
    go.set()
    runs = await asyncio.gather(*students)
    wall, cpu = time.perf_counter() - began, server.cpu_seconds() - cpu_before
    stop.set()
    await sampler
    return runs, ready, peak[0], wall, cpu


# --------------------------------------------------------------------------- the benchmark


def percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def cloze_sentences() -> list[str]:
    from mlm_core.resources import asset

    lines = asset("cloze_en.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def own_sentences(count: int, mask: str = "[MASK]") -> list[str]:
    """``count`` different sentences of the demo corpus, each with its last word masked (the free scenario)."""
    from mlm_core.resources import asset

    found = []
    for line in asset("demo_corpus.txt").read_text().splitlines():
        words = line.strip().split(" ")
        last = re.fullmatch(r"([A-Za-z]+)([.!?]?)", words[-1]) if len(words) > 3 else None
        if last:
            found.append(" ".join([*words[:-1], mask + last.group(2)]))
        if len(found) == count:
            return found
    raise RuntimeError(f"the demo corpus has fewer than {count} usable sentences")


def plans(sessions: int, predictions: int) -> dict[str, list[list[str]]]:
    """Each scenario's sentences per session: free (every session its own) and teacher-led (everyone the same)."""
    teacher = cloze_sentences()[:predictions]
    free = own_sentences(sessions * predictions)
    return {
        "free": [free[s * predictions:(s + 1) * predictions] for s in range(sessions)],
        "teacher-led": [list(teacher) for _ in range(sessions)],
    }


GOALS = {"free": GOAL_P95_S, "teacher-led": TEACHER_GOAL_P95_S}
SCENARIO_NOTES = {"free": "every session its own sentences", "teacher-led": "every session the same sentences"}


def summary(name: str, plan: list[list[str]], outcome, say: Printer) -> dict:
    """Print one scenario's figures; return them for the results file."""
    runs, connect_times, peak_rss, wall, cpu = outcome
    flat = [run for session_runs in runs for run in session_runs]
    seconds = sorted(run.seconds for run in flat if run.seconds is not None)
    failed = [run for run in flat if run.problems]
    if not seconds:  # no latency to report, so no ratio: `python -m benchmarks` marks it FAILED
        problems = sorted({p for run in failed for p in run.problems})
        sys.exit(f"error: {name}: none of the {len(flat)} predictions finished, e.g. {problems[:3]}")
    p50, p95 = percentile(seconds, 50), percentile(seconds, 95)
    connected = [t for t in connect_times if t is not None]
    say(f"[{name}] {SCENARIO_NOTES[name]}: {len(connected)} of {len(plan)} sessions connected "
        f"(slowest {max(connected, default=0):.2f} s); example {plan[0][-1]!r} -> filled in {runs[0][-1].filled!r}")
    say(f"[{name}] latency per prediction, {len(seconds)} finished: p50 {p50:.2f} s, p95 {p95:.2f} s, "
        f"max {seconds[-1]:.2f} s (goal: p95 under {GOALS[name]:g} s); errors: {len(failed)} of {len(flat)}")
    opened = [run.seconds for session_runs in runs for run in session_runs[:1] if run.seconds is not None]
    typed = [run.seconds for session_runs in runs for run in session_runs[1:] if run.seconds is not None]
    if opened and typed:  # a session's first run is its page's first: every widget is new
        say(f"[{name}]   opening the link: p50 {percentile(opened, 50):.2f} s, p95 {percentile(opened, 95):.2f} s; "
            f"typing a sentence: p50 {percentile(typed, 50):.2f} s, p95 {percentile(typed, 95):.2f} s")
    for problem in sorted({p for run in failed for p in run.problems})[:5]:
        say(f"[{name}]   e.g. {problem}")
    say(f"[{name}] throughput {len(seconds) / wall:.1f} predictions/s; server CPU {cpu:.1f} s in {wall:.1f} s "
        f"({cpu / wall:.2f} cores busy), {cpu / max(1, len(seconds)):.2f} CPU s per prediction; "
        f"peak RSS {peak_rss / MB:.0f} MB")
    return {"p50_s": p50, "p95_s": p95, "max_s": seconds[-1], "errors": len(failed), "finished": len(seconds),
            "server_cpu_s": cpu, "wall_s": wall, "cores_busy": cpu / wall, "rss_peak_mb": peak_rss / MB,
            "latencies_s": [round(x, 4) for x in seconds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30, help="concurrent sessions (default 30)")
    parser.add_argument("--predictions", type=int, default=5, help="predictions per session (default 5)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--think", type=float, default=0.0,
                        help="seconds between a session's predictions (default 0)")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait after the sessions close (default 10)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds before a prediction counts as failed (default 120)")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="torch threads in the server (default: the app's own, MASKLAB_TORCH_THREADS or 1)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server process itself
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.server_threads)
        return
    if args.sessions < 1 or args.predictions < 1:
        parser.error("--sessions and --predictions must be at least 1")

    say = Printer()
    load_at_start = os.getloadavg()
    port = args.port or free_port()
    scenarios = plans(args.sessions, args.predictions)
    warm_sentence = cloze_sentences()[-1]  # in neither scenario: the shared results start empty for both
    server = Server(port, args.server_threads)
    outcomes = {}
    try:
        try:
            started = server.wait_ready()
        except RuntimeError as exc:
            sys.exit(f"error: {exc}")
        idle_rss = server.rss()
        idle = server.probe()

        async def warm_up() -> Run:  # loads the model and pays every first-call cost once
            session = Session(port, args.timeout)
            await session.connect()
            try:
                return await session.open_link(warm_sentence, VIEWS[0])
            finally:
                await session.close()

        warm = asyncio.run(warm_up())
        if warm.problems:
            raise RuntimeError(f"the warm-up session failed: {warm.problems}\n" + "\n".join(server.log))
        time.sleep(1.0)  # let the server finish closing the warm-up session before measuring
        before_rss = server.rss()
        before = server.probe()
        for name, plan in scenarios.items():  # free first: the teacher's sentences are not in the cache yet either
            outcomes[name] = asyncio.run(classroom(server, plan, args.think, args.timeout))
            time.sleep(1.0)  # the sessions close before the next class starts
        during = server.probe()  # sessions closed just now; models still loaded
        closed_rss = server.rss()
        time.sleep(args.settle)
        after_rss = server.rss()
        after = server.probe()
    finally:
        server.stop()

    copies = max(before["cache_models"], during["cache_models"], after["cache_models"])
    live = max(before["live_models"], during["live_models"], after["live_models"])
    info = machine()
    info["load_at_start"] = [round(x, 2) for x in load_at_start]
    info["gpu"] = before.get("gpu")
    info["versions"].update({k: before[k] for k in ("torch", "transformers", "streamlit") if k in before})

    say(f"machine: {info['cores']} cores, {info['cpu']}, {info['os']}, GPU: {info['gpu'] or 'none'}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in load_at_start)}")
    say(f"app: app.py (Explore page, default model), {args.sessions} concurrent sessions x "
        f"{args.predictions} predictions with attention, views {', '.join(VIEWS)}; "
        f"think time {args.think:g} s; server torch threads {before.get('torch_threads')}")
    say(f"server start {started:.1f} s; warm-up session (loads the model) {warm.seconds:.1f} s")
    figures = {name: summary(name, scenarios[name], outcomes[name], say) for name in scenarios}
    peak_rss = max(outcome[2] for outcome in outcomes.values())
    say(f"server RSS: idle {idle_rss / MB:.0f} MB; before the sessions (model loaded, warmed up) "
        f"{before_rss / MB:.0f} MB; peak {peak_rss / MB:.0f} MB; just after they closed "
        f"{closed_rss / MB:.0f} MB; {args.settle:g} s later {after_rss / MB:.0f} MB "
        f"({(after_rss - before_rss) / MB:+.0f} MB from before)")
    sessions = after.get("sessions") or {}
    say(f"sessions the server still holds {args.settle:g} s after closing: {sessions.get('held', '?')} "
        f"({sessions.get('active', '?')} connected; Streamlit keeps a closed tab's session "
        f"server.disconnectedSessionTTL = {after.get('session_ttl_s', '?')} s for reconnection)")
    say(f"model copies in memory: shared cache {before['cache_models']} before / {during['cache_models']} "
        f"after the load / {after['cache_models']} settled; live model objects {before['live_models']} / "
        f"{during['live_models']} / {after['live_models']} (idle server: {idle['cache_models']})")
    say(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    free, teacher = figures["free"], figures["teacher-led"]
    ratio = free["p95_s"] / GOAL_P95_S
    errors = free["errors"] + teacher["errors"]
    met = ratio <= 1 and teacher["p95_s"] <= TEACHER_GOAL_P95_S and not errors and live == 1
    say(f"lower is better: free scenario p95 latency / {GOAL_P95_S:g} s goal = {ratio:.2f} "
        f"({'meets' if met else 'misses'} the goals: no errors, one model copy, free p95 under {GOAL_P95_S:g} s, "
        f"teacher-led p95 under {TEACHER_GOAL_P95_S:g} s)")
    write_result(
        "classroom",
        title=f"{args.sessions} concurrent Explore sessions x {args.predictions} predictions with attention, "
        "real app over websockets, free and teacher-led (free p95 latency; lower is better)",
        ours=f"free: p95 {free['p95_s']:.2f} s (p50 {free['p50_s']:.2f} s); teacher-led: p95 {teacher['p95_s']:.2f} s "
        f"(p50 {teacher['p50_s']:.2f} s); {errors} errors, {live} model cop{'y' if live == 1 else 'ies'}, "
        f"RSS {before_rss / MB:.0f} → peak {peak_rss / MB:.0f} → {after_rss / MB:.0f} MB after",
        baseline=f"goal: free p95 {GOAL_P95_S:g} s, teacher-led p95 {TEACHER_GOAL_P95_S:g} s, no errors, one model copy",
        ratio=ratio, goal="≤ 1", better="lower", printed=say.lines, machine_info=info,
        figures={
            "sessions": args.sessions, "predictions": args.predictions, "think_s": args.think,
            "server_torch_threads": before.get("torch_threads"), "scenarios": figures,
            "errors": errors, "model_copies_cache": copies, "model_copies_live": live,
            "rss_idle_mb": idle_rss / MB, "rss_before_mb": before_rss / MB, "rss_peak_mb": peak_rss / MB,
            "rss_closed_mb": closed_rss / MB, "rss_after_mb": after_rss / MB, "settle_s": args.settle,
            "warm_up_s": warm.seconds, "server_start_s": started,
        },
    )
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
