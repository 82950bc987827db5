"""`fmnist serve` against LitServe, the peer a user would pick instead, on the same model and body:

    python -m benchmarks.serve_vs_litserve [RUN_DIR] [--seconds 12] [--rounds 2] [--out FILE.json]

- The model: RUN_DIR's checkpoint (without one, a default-recipe cnn trained for one epoch
  here), served by `fmnist serve RUN_DIR --workers 2` as a user would start it, and exported
  with `fmnist export RUN_DIR --format onnx` for LitServe.
- The peer: LitServe (`--litserve` pins the version) in a virtual environment of its own
  (`--venv`, made on first use: litserve, onnxruntime, numpy, pillow; no torch, and never the
  fmnist package), running the ONNX file on onnxruntime with its dynamic batching (max batch
  64, a 2 ms window) and 2 inference workers (and, by its default, as many API processes).
  Its API (`OnnxFashionAPI` below) takes fmnist's JSON body, `{"images": [base64 PNG]}`, and
  does what `fmnist serve` does with it: `fmnist.images.open_image` and `preprocess` (imported
  from the source tree, they need only numpy and Pillow), x/255 (the graph normalises with
  the checkpoint's mean and std), flip TTA when the checkpoint was evaluated with it (the image
  and its mirror in one run, logits averaged), softmax, and the same prediction fields: label,
  index, probability, top 3, all probabilities and the 28x28 input as a PNG data URL. One
  onnxruntime thread per worker, as `fmnist serve` gives each of its 2 workers on 2 cores.
- The load: `hey` (Debian's package) at 8 clients posting the same body, one real test image,
  keep-alive, for `--seconds` after a 3 s warm-up, against each server in turn, A B A B: a
  server is started for its round and stopped after it, so that only one runs at a time.
  Per round: requests/s, p50/p99 latency, statuses and failed requests, and the memory of
  every process of the server (the process and all its descendants): RSS summed, the most
  seen while the load ran, and PSS summed (shared pages counted once). Each fmnist round then
  runs once more asking `?fields=` exactly the peer's fields, as fmnist's default answer may
  hold more than the peer computes (both servers' fields are recorded).
- The retry storm: `benchmarks.serve_lifecycle`'s storm (48 impatient clients posting
  32-image batches with 0.3 s timeouts and retrying at once, beside one patient client),
  against `fmnist serve` only: that scenario starts its own server and speaks multipart.

The figures are side by side in one run on a machine others may be using: read the ratios,
and the load average recorded before and after. Nothing asserts a timing. Results: a
markdown table on stdout and JSON under benchmarks/results/ (or `--out`).

This file is also LitServe's server: run by the peer's own interpreter as
`python -m benchmarks.serve_vs_litserve --serve-litserve MODEL.onnx --port N`, it imports
only the standard library at the top, so that it loads in either environment.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

try:  # only the peer's own environment has it: this file is its server too (see above)
    import litserve as ls

    _LitAPI: type = ls.LitAPI
except ImportError:
    _LitAPI = object

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
LITSERVE_VERSION = "0.2.19"
# what the peer's venv gets besides LitServe: the runtime and what fmnist.images needs
PEER_PACKAGES = ("onnxruntime", "numpy", "pillow")
WORKERS = 2
CLIENTS = 8
MAX_BATCH = 64
BATCH_TIMEOUT_S = 0.002
WARMUP_S = 3.0
# what the peer's answer holds for each image (OnnxFashionAPI.encode_response); fmnist's default
# answer may hold more, so each fmnist round also runs with `?fields=` these
PEER_FIELDS = ("name", "label", "index", "probability", "top", "probabilities", "input")


# ---- the peer: LitServe serving the exported ONNX file ---------------------------------------


class OnnxFashionAPI(_LitAPI):  # type: ignore[misc]
    """LitServe's four hooks around an `fmnist export --format onnx` file, answering fmnist's
    JSON body with fmnist's prediction fields (see the module's docstring)."""

    def __init__(self, onnx_path: str, threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.onnx_path, self.threads = onnx_path, threads

    def setup(self, device: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.onnx_path, options, providers=["CPUExecutionProvider"])
        meta = json.loads(self.session.get_modelmeta().custom_metadata_map["fmnist_meta"])
        self.model = meta.get("model")
        self.classes = list(meta["classes"])
        self.tta = bool(meta.get("tta_flip"))
        from fmnist.images import BOX_SIZE, DEFAULT_BOX

        self.box = BOX_SIZE.get(str(meta.get("dataset", "")), DEFAULT_BOX)

    # no annotations on decode_request's `request` and encode_response's return: LitServe builds
    # its route from them (none: the parsed JSON body in, the dict out as JSON)
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        import numpy as np

        from fmnist.images import open_image, preprocess

        images = [preprocess(open_image(base64.b64decode(s)), box=self.box) for s in request["images"]]
        return np.stack(images)  # uint8 (n, 28, 28)

    def batch(self, inputs: list[Any]) -> Any:
        import numpy as np

        return np.concatenate(inputs), [len(x) for x in inputs]

    def predict(self, batch: Any) -> list[Any]:
        import numpy as np

        images, counts = batch
        x = images[:, None].astype(np.float32) / 255.0  # (N, 1, 28, 28) in [0, 1]
        if self.tta:  # the image and its mirror in one run, as fmnist's OnnxPredictor
            both = self.session.run(["logits"], {"image": np.concatenate([x, x[..., ::-1]])})[0]
            logits = (both[: len(x)] + both[len(x) :]) / 2
        else:
            logits = self.session.run(["logits"], {"image": x})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        bounds = np.cumsum([0, *counts])
        return [(images[a:b], probs[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        from PIL import Image

        images, probs = output
        predictions = []
        for i, (image, p) in enumerate(zip(images, probs, strict=True)):
            probabilities = {c: float(v) for c, v in zip(self.classes, p, strict=True)}
            ranked = sorted(probabilities.items(), key=lambda kv: kv[1], reverse=True)
            index = int(p.argmax())
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            prediction = {
                "name": f"image {i}", "label": self.classes[index], "index": index,
                "probability": probabilities[self.classes[index]],
                "top": [{"label": c, "probability": v} for c, v in ranked[:3]],
                "probabilities": probabilities,
                "input": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
            }  # fmt: skip
            predictions.append({f: prediction[f] for f in PEER_FIELDS})
        return {"model": self.model, "count": len(predictions), "predictions": predictions}


def serve_litserve(onnx_path: str, port: int, workers: int) -> None:
    """LitServe's server (in the peer's venv): 2 inference workers, batching as fmnist's."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    api = OnnxFashionAPI(onnx_path, threads, max_batch_size=MAX_BATCH, batch_timeout=BATCH_TIMEOUT_S,
                         api_path="/v1/predict")  # fmt: skip
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=workers, timeout=30)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


def peer_venv(venv: Path, version: str) -> Path:
    """The peer's interpreter, its venv made (or completed) on first use."""
    python = venv / "bin" / "python"
    want = f"litserve=={version}"
    if python.exists() and _pip_has(python, want):
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", want,
                    *PEER_PACKAGES], check=True)  # fmt: skip
    return python


def _pip_has(python: Path, requirement: str) -> bool:
    name, version = requirement.split("==")
    out = subprocess.run([str(python), "-m", "pip", "show", name], capture_output=True, text=True)
    return f"Version: {version}" in out.stdout


def peer_versions(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    wanted = {"litserve", "onnxruntime", "fastapi", "uvicorn", "numpy", "pillow"}
    return {p["name"]: p["version"] for p in json.loads(out.stdout) if p["name"].lower() in wanted}


# ---- the driver: both servers under hey, alternating ------------------------------------------


def start_litserve(python: Path, onnx: Path, port: int, log: Path) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    cmd = [str(python), "-m", "benchmarks.serve_vs_litserve", "--serve-litserve", str(onnx),
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"LitServe exited early:\n{log.read_text()[-3000:]}")
        try:  # /health answers ok once every inference worker has run setup()
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).text.strip('"') == "ok":
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_tree(proc)
    raise SystemExit(f"LitServe was not ready in 180 s:\n{log.read_text()[-3000:]}")


def stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the server's process group (LitServe's workers included)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tree_memory_mb(pid: int) -> dict[str, float]:
    """RSS and PSS summed over a process and all its descendants, in MB."""
    from benchmarks.serve_load import _children

    rss = pss = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:  # gone meanwhile
            pass
    return {"rss_mb": rss / 1024, "pss_mb": pss / 1024, "processes": 1 + len(_children(pid))}


HEY_STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses", re.M)
HEY_ERROR = re.compile(r"^\s*\[(\d+)\]\s+(.+)$", re.M)


def run_hey(url: str, body: Path, clients: int, seconds: float) -> dict[str, Any]:
    """hey's summary of a timed run, parsed: requests/s, latency percentiles, statuses, errors."""
    cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(clients), "-m", "POST", "-T", "application/json",
           "-t", "30", "-D", str(body), url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120).stdout

    def number(pattern: str) -> float | None:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else None

    statuses = {k: int(v) for k, v in HEY_STATUS.findall(out)}
    errors_part = out.split("Error distribution:", 1)[1] if "Error distribution:" in out else ""
    errors = {msg.strip(): int(n) for n, msg in HEY_ERROR.findall(errors_part)}
    if number(r"Requests/sec:\s+([\d.]+)") is None:
        raise SystemExit(f"hey gave no summary:\n{out}")
    return {
        "requests_per_s": number(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": 1e3 * (number(r"50%+ in ([\d.]+) secs") or float("nan")),
        "p99_ms": 1e3 * (number(r"99%+ in ([\d.]+) secs") or float("nan")),
        "slowest_ms": 1e3 * (number(r"Slowest:\s+([\d.]+) secs") or float("nan")),
        "statuses": statuses, "errors": errors,
        "failed": sum(errors.values()) + sum(v for k, v in statuses.items() if k != "200"),
    }  # fmt: skip


def one_round(name: str, start: Any, stop: Any, body: Path, seconds: float,
              extra: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Start a server, ask it once (its `answer`), warm it, drive it with hey while sampling its
    memory, then once more per `extra` query (name -> query string, same load), stop it."""
    import httpx

    from benchmarks.serve_load import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/predict"
    t0 = time.monotonic()
    proc = start(port)
    started_s = time.monotonic() - t0
    try:
        answer = httpx.post(url, content=body.read_bytes(), timeout=30,
                            headers={"Content-Type": "application/json"}).json()  # fmt: skip
        run_hey(url, body, CLIENTS, WARMUP_S)
        peak: dict[str, float] = {"rss_mb": 0.0}
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                m = tree_memory_mb(proc.pid)
                if m["rss_mb"] > peak["rss_mb"]:
                    peak.update(m)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = run_hey(url, body, CLIENTS, seconds)
        finally:
            done.set()
            sampler.join()
        for label, query in (extra or {}).items():
            result[label] = run_hey(url + query, body, CLIENTS, seconds)
        idle = tree_memory_mb(proc.pid)
    finally:
        stop(proc)
    return {"server": name, **result, "seconds_to_ready": round(started_s, 1),
            "memory_under_load": peak, "memory_after": idle, "answer": answer}  # fmt: skip


def json_body(folder: Path) -> tuple[Path, dict[str, Any]]:
    """{"images": [base64 PNG]} of the first test image (the real data must be installed)."""
    from PIL import Image

    from fmnist.datasets import load_arrays

    images, labels = load_arrays("fashion-mnist", "test", download=False)[:2]
    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, format="PNG")
    path = folder / "body.json"
    path.write_text(json.dumps({"images": [base64.b64encode(buf.getvalue()).decode("ascii")]}))
    return path, {"test_index": 0, "label": int(labels[0]), "png_bytes": len(buf.getvalue()),
                  "body_bytes": path.stat().st_size}  # fmt: skip


def check_same_answer(fmnist_answer: dict[str, Any], peer_answer: dict[str, Any]) -> dict[str, Any]:
    """Both servers must say the same thing about the body, or the comparison is void (checked
    on each server's first answer, before its first round)."""
    a, b = fmnist_answer["predictions"][0], peer_answer["predictions"][0]
    diff = max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in a["probabilities"])
    same = a["label"] == b["label"] and a["input"] == b["input"] and diff < 1e-4
    if not same:
        raise SystemExit(f"The servers disagree on the body: fmnist {a['label']} vs LitServe "
                         f"{b['label']}, max probability difference {diff:.2g}.")  # fmt: skip
    # fmnist's answer may carry more than the peer computes (e.g. trust fields): said, not hidden
    return {"label": a["label"], "max_probability_difference": diff, "same_input_png": True,
            "fmnist_fields": sorted(a), "litserve_fields": sorted(b),
            "fmnist_only_fields": sorted(set(a) - set(b))}  # fmt: skip


def model_summary(run: Path) -> dict[str, Any]:
    """What was served, from the checkpoint's own model.json (the run folder may be gone)."""
    meta = json.loads((run / "model.json").read_text())
    return {k: meta.get(k) for k in ("model", "model_config", "recipe", "epoch", "tta_flip", "dataset")} | {
        "test_accuracy": meta.get("metrics", {}).get("test_accuracy")}  # fmt: skip


def train_small(folder: Path) -> Path:
    from benchmarks.common import run_child, train_cmd

    run_child(train_cmd("--recipe", "default", "--epochs", "1", "--no-tensorboard", "--out", str(folder)))
    return folder


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("fmnist", "litserve"):
        mine = [r for r in rounds if r["server"] == name]
        out[name] = {
            "requests_per_s": statistics.median(r["requests_per_s"] for r in mine),
            "p50_ms": statistics.median(r["p50_ms"] for r in mine),
            "p99_ms": statistics.median(r["p99_ms"] for r in mine),
            "rss_mb": statistics.median(r["memory_under_load"]["rss_mb"] for r in mine),
            "pss_mb": statistics.median(r["memory_under_load"]["pss_mb"] for r in mine),
            "failed": sum(r["failed"] for r in mine),
        }
    same = [r["peer_fields"] for r in rounds if "peer_fields" in r]
    if same:
        out["fmnist_peer_fields"] = {
            "requests_per_s": statistics.median(r["requests_per_s"] for r in same),
            "p50_ms": statistics.median(r["p50_ms"] for r in same),
            "p99_ms": statistics.median(r["p99_ms"] for r in same),
            "failed": sum(r["failed"] for r in same),
        }
    f, p = out["fmnist"], out["litserve"]
    out["ratios_fmnist_over_litserve"] = {k: f[k] / p[k] for k in ("requests_per_s", "p50_ms", "p99_ms",
                                                                    "rss_mb", "pss_mb")}  # fmt: skip
    if same:
        for k in ("requests_per_s", "p99_ms"):
            out["ratios_fmnist_over_litserve"][f"{k}_peer_fields"] = out["fmnist_peer_fields"][k] / p[k]
    return out


def comparison_table(saved: dict[str, Any]) -> str:
    """A saved run as markdown: the machine and command, one row per round, the medians."""
    from benchmarks.common import machine_line

    def row(label: str, r: dict[str, Any], mem: dict[str, float]) -> str:
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items())) or "none"
        return (f"| {label} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{statuses} | {r['failed']:,} | {mem['rss_mb']:,.0f} | {mem['pss_mb']:,.0f} |")

    names = {"fmnist": "fmnist serve", "litserve": f"LitServe {saved['peer']['versions'].get('litserve')}"}
    lines = [machine_line(saved["machine"]), f"Command: `{saved['command']}`", "",
             "| server (round) | requests/s | p50 ms | p99 ms | statuses | failed | RSS MB | PSS MB |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]  # fmt: skip
    fields = ",".join(PEER_FIELDS)
    for r in saved["rounds"]:
        lines.append(row(f"{names[r['server']]} ({r['round']})", r, r["memory_under_load"]))
        if "peer_fields" in r:
            lines.append(row(f"{names[r['server']]} ({r['round']}), `?fields={fields}`", r["peer_fields"],
                             r["memory_after"]))  # fmt: skip
    extra = saved["agreement"].get("fmnist_only_fields")
    ratios = saved["summary"]["ratios_fmnist_over_litserve"]
    lines += ["", "fmnist serve over LitServe, medians of the rounds: " + ", ".join(
        f"{k.replace('_', ' ')} {v:.2f}x" for k, v in ratios.items())]  # fmt: skip
    if extra:
        lines.append(f"fmnist's default answer also holds {', '.join(extra)}, which LitServe's does not; "
                     f"the `?fields=` rows ask fmnist for exactly the peer's fields "
                     f"(medians: {saved['summary']['fmnist_peer_fields']['requests_per_s']:,.0f} requests/s, "
                     f"p99 {saved['summary']['fmnist_peer_fields']['p99_ms']:.1f} ms).")  # fmt: skip
    if saved.get("storm"):
        s = saved["storm"]
        lines.append(f"Retry storm (fmnist serve): patient client p99 {s['patient_p99_ms']} ms, "
                     f"statuses {s['patient_statuses']}; storm clients {s['storm']}.")  # fmt: skip
    return "\n".join(lines)


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", default=None,
                   help="run folder to serve (default: train a default-recipe cnn for 1 epoch)")
    p.add_argument("--seconds", type=float, default=12.0, help="per round, after a 3 s warm-up")
    p.add_argument("--rounds", type=int, default=2, help="rounds per server, alternating (A B A B)")
    p.add_argument("--storm-seconds", type=float, default=8.0, help="0: no retry storm")
    p.add_argument("--litserve", default=LITSERVE_VERSION, help="LitServe's version")
    p.add_argument("--venv", default=str(Path(tempfile.gettempdir()) / "fmnist-litserve-venv"),
                   help="the peer's virtual environment (made on first use)")
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/"
                                               "<date>-<machine>-serve-vs-litserve.json)")
    # the peer's server, run by its own interpreter (see the module's docstring)
    p.add_argument("--serve-litserve", metavar="MODEL.onnx", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=8000, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = get_args(argv)
    if args.serve_litserve:
        serve_litserve(args.serve_litserve, args.port, WORKERS)
        return 0
    import shutil

    from benchmarks.common import machine_info, machine_slug
    from benchmarks.serve_load import start_server, stop_server
    from fmnist.atomic import write_text

    if shutil.which("hey") is None:
        raise SystemExit("hey is not installed: `bash scripts/ensure-deb.sh /usr/bin/hey hey "
                         "benchmark` installs Debian's package.")  # fmt: skip
    info = machine_info()
    load_before = os.getloadavg()
    python = peer_venv(Path(args.venv), args.litserve)
    with tempfile.TemporaryDirectory(prefix="serve-vs-litserve-") as tmp_dir:
        tmp = Path(tmp_dir)
        run = Path(args.run) if args.run else train_small(tmp / "run")
        onnx = tmp / "model.onnx"
        subprocess.run([sys.executable, "-m", "fmnist", "export", str(run), "--format", "onnx",
                        "--out", str(onnx)], check=True, capture_output=True)  # fmt: skip
        body, image = json_body(tmp)
        served = model_summary(run)
        fmnist_flags = ["--workers", str(WORKERS)]
        # name -> (start on a port, stop): fmnist's parent drains its workers on SIGTERM;
        # LitServe's workers get the signal through its process group
        servers = {
            "fmnist": (lambda port: start_server(str(run), port, fmnist_flags), stop_server,
                       {"peer_fields": "?fields=" + ",".join(PEER_FIELDS)}),
            "litserve": (lambda port: start_litserve(python, onnx, port, tmp / "litserve.log"), stop_tree,
                         None),
        }  # fmt: skip
        rounds, answers = [], {}
        for i in range(args.rounds):
            for name, (start, stop, extra) in servers.items():
                result = one_round(name, start, stop, body, args.seconds, extra)
                answers.setdefault(name, result.pop("answer"))
                rounds.append({"round": i + 1, **result})
                print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
        agreement = check_same_answer(answers["fmnist"], answers["litserve"])
        storm = None
        if args.storm_seconds > 0:
            import asyncio

            from benchmarks.serve_lifecycle import storm as retry_storm

            storm = asyncio.run(retry_storm(str(run), args.storm_seconds))
    command = ["python", "-m", "benchmarks.serve_vs_litserve",
               *(argv if argv is not None else sys.argv[1:])]  # fmt: skip
    hey_cmd = (f"hey -z {args.seconds:g}s -c {CLIENTS} -m POST -T application/json -t 30 "
               f"-D body.json http://127.0.0.1:PORT/v1/predict")  # fmt: skip
    saved = {
        "benchmark": "serve_vs_litserve", "machine": info, "command": shlex.join(command),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "noise": "2 shared cores; other work may run beside the benchmark: compare the rounds "
                 "side by side, and the load averages",
        "run": str(args.run or "a default-recipe cnn trained for 1 epoch by this benchmark"),
        "model": served,
        "body": image, "agreement": agreement, "seconds": args.seconds, "warmup_s": WARMUP_S,
        "clients": CLIENTS, "load_command": hey_cmd,
        "fmnist": {"command": shlex.join(["fmnist", "serve", "RUN", *fmnist_flags])},
        "peer": {"versions": peer_versions(python), "workers": WORKERS, "max_batch_size": MAX_BATCH,
                 "batch_timeout_s": BATCH_TIMEOUT_S,
                 "command": "python -m benchmarks.serve_vs_litserve --serve-litserve MODEL.onnx "
                            "--port PORT (in the peer's venv)"},
        "rounds": rounds, "summary": summarize(rounds), "storm": storm,
    }  # fmt: skip
    print(comparison_table(saved))
    out = Path(args.out) if args.out else RESULTS / f"{time.strftime('%Y-%m-%d')}-{machine_slug(info)}-serve-vs-litserve.json"
    write_text(out, json.dumps(saved, indent=1) + "\n", "results file")
    print(f"\nWrote {out}", file=sys.stderr)
    return 1 if any(r["failed"] or r.get("peer_fields", {}).get("failed") for r in rounds) else 0


if __name__ == "__main__":
    raise SystemExit(main())
