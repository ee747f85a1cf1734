"""Each benchmark script runs end to end with tiny settings and writes its result file.

No timing is asserted: these only show the scripts work (the numbers come
from `benchmarks/run_all.sh` on a quiet machine).
"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import threading
import time
import warnings
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from dermalens import __version__
from dermalens.classes import CLASS_CODES
from dermalens.models.checkpoint import CHECKPOINT_KEY
from dermalens.models.classifier import ModelConfig, create_classifier
from dermalens.models.ensemble import LesionEnsemble

pytestmark = pytest.mark.bench
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# timm's efficientnet_lite0 (no TF "same" padding) at 32 px: the cheapest real backbone. One
# thread: on a shared machine several threads per process mostly wait for each other.
TINY_MODEL = ["--backbone", "efficientnet_lite0", "--image-size", "32", "--no-cbam", "--threads", "1"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_result(path: Path) -> dict:
    document = json.loads(path.read_text())
    assert {"benchmark", "machine", "settings", "rows", "notes"} <= set(document)
    machine = document["machine"]
    assert machine["cpu"] and machine["cores_available"] >= 1 and machine["libraries"]["torch"]
    return document


@pytest.fixture(autouse=True)
def quiet():
    threads = torch.get_num_threads()  # the scripts set torch's thread count for the whole process
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(threads)


def write_tiny_checkpoint(path: Path, members: int = 1) -> Path:
    """A random-weight checkpoint in dermalens's format, without training (what load_classifier reads);
    `members` > 1: an ensemble of that many, as cross-validation ships it."""
    config = ModelConfig(backbone="efficientnet_lite0", image_size=32, cbam=True, pretrained="none")
    model = create_classifier(config, load_pretrained=False)
    meta = {"version": __version__, "classes": list(CLASS_CODES), "model_config": asdict(config),
            "preprocessing": model.preprocessing.to_dict(), "weights_source": "random", "val_metrics": {}, "epoch": 0}
    if members > 1:
        model = LesionEnsemble([model, *(create_classifier(config, load_pretrained=False) for _ in range(members - 1))])
        meta["ensemble"] = model.ensemble_record()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, CHECKPOINT_KEY: meta}, path)
    return path


def test_inference_latency_runs(tmp_path, capsys):
    out = tmp_path / "inference_latency.json"
    load_script("inference_latency").main([*TINY_MODEL, "--rounds", "2", "--batch", "2", "--batch-rounds", "1",
                                           "--exporter", "torchscript", "--no-int8", "--out", str(out)])
    rows = {row["variant"].split(" ")[0]: row for row in read_result(out)["rows"]}
    assert {"eager", "channels_last", "onnxruntime", "app_onnxruntime", "app_eager"} <= set(rows)
    assert rows["eager"]["vs_eager_p50"] == 1.0 and rows["onnxruntime"]["batch2_img_per_s"] > 0
    assert "| variant |" in capsys.readouterr().out


def test_inference_latency_compares_openvino(tmp_path, openvino_installed):
    out = tmp_path / "inference_latency.json"
    load_script("inference_latency").main([*TINY_MODEL, "--rounds", "2", "--batch", "2", "--batch-rounds", "1",
                                           "--repeats", "1", "--no-int8", "--openvino", "--out", str(out)])
    document = read_result(out)
    rows = {row["variant"].split(" ")[0]: row for row in document["rows"]}
    assert "openvino_f32" in rows and rows["openvino_f32"]["batch1_p50_ms"] > 0
    # bf16 only where the CPU has bf16 instructions; otherwise OpenVINO runs f32 and says so.
    assert set(r for r in rows if r.startswith("openvino")) <= {"openvino_f32", "openvino_bf16"}
    assert any(note.startswith("OpenVINO round:") for note in document["notes"])


def test_onnx_tuning_runs(tmp_path):
    out = tmp_path / "onnx_tuning.json"
    load_script("onnx_tuning").main([*TINY_MODEL, "--rounds", "1", "--out", str(out)])
    rows = read_result(out)["rows"]
    assert {row["optimization"] for row in rows} >= {"eager PyTorch", "basic", "extended", "all"}
    assert {row["exporter"] for row in rows} >= {"dynamo", "torchscript"}
    # The graph experiments run (through their own session set-up) even with one thread.
    assert {row["extra"] for row in rows} >= {"disabled_optimizers=QuickGeluFusion", "batch_override=1"}


def test_onnx_profile_splits_kernel_time_by_operator(tmp_path):
    out = tmp_path / "onnx_profile.json"
    load_script("onnx_profile").main([*TINY_MODEL, "--runs", "2", "--out", str(out)])
    rows = {row["operator"]: row for row in read_result(out)["rows"]}
    assert "Conv" in rows and rows["Conv"]["nodes"] > 10  # an EfficientNet is mostly convolutions
    assert sum(row["share"] for row in rows.values()) == pytest.approx(1.0, abs=0.01)
    assert all(row["ms_per_run"] >= 0 for row in rows.values())


def test_training_throughput_runs(tmp_path):
    out = tmp_path / "training_throughput.json"
    load_script("training_throughput").main([
        "--setups", "dermamnist", "--workers", "0", "--steps", "2", "--warmup", "1", "--repeats", "1",
        "--batch-size", "4", "--threads", "1", "--set", "data.format=synthetic", "data.synthetic_per_class=10",
        "model.image_size=32",
        "data.cache_dir=null", "--fp32-eager", "--out", str(out)])
    row, eager = read_result(out)["rows"]
    assert row["setup"] == "dermamnist" and row["num_workers"] == 0
    assert row["real_img_per_s"] > 0 and row["model_bound_img_per_s"] > 0 and row["ratio"] > 0
    # The speed-up baseline: the same model in fp32 without channels-last, on the same machine and run.
    assert eager["variant"] == "fp32 eager" and eager["model_bound_img_per_s"] > 0
    assert eager["speedup_of_recipe"] == round(row["model_bound_img_per_s"] / eager["model_bound_img_per_s"], 2)


def test_quantization_accuracy_runs(tmp_path, shared_data):
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt" / "model.ckpt")
    out = tmp_path / "quantization_accuracy.json"
    load_script("quantization_accuracy").main([
        "--model", str(checkpoint), "--data", str(shared_data), "--limit", "40", "--rounds", "2",
        "--methods", "static", "--calibration-count", "16", "--exporter", "torchscript", "--threads", "1",
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out)])
    document = read_result(out)
    rows = {row["model"]: row for row in document["rows"]}
    assert set(rows) == {"pytorch", "onnx_fp32", "onnx_int8_static"}
    assert document["settings"]["test_images"] == 40
    assert rows["onnx_fp32"]["max_abs_dp_vs_pytorch"] <= 1e-4
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["balanced_accuracy"] <= 1


def test_quantization_accuracy_with_openvino(tmp_path, shared_data, openvino_installed):
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt" / "model.ckpt")
    out = tmp_path / "quantization_accuracy.json"
    load_script("quantization_accuracy").main([
        "--model", str(checkpoint), "--data", str(shared_data), "--limit", "20", "--rounds", "2",
        "--methods", "dynamic", "--openvino", "--exporter", "torchscript", "--threads", "1",
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out)])
    rows = {row["model"]: row for row in read_result(out)["rows"]}
    # OpenVINO at f32 computes the same model: same probabilities as PyTorch within export tolerance.
    assert rows["openvino_f32"]["max_abs_dp_vs_pytorch"] <= 1e-4
    assert rows["openvino_f32"]["top1_agrees_with_fp32"] == 1.0


def test_load_test_serves_and_records_the_runtime(tmp_path, sample_dir):
    """The load test starts `dermalens serve` with the runtime asked for and records what answered."""
    checkpoint = write_tiny_checkpoint(tmp_path / "model" / "best.ckpt")
    out = tmp_path / "load_test.json"
    status = load_script("load_test").main([
        "--model", str(checkpoint), "--image", str(sorted(sample_dir.glob("ISIC_*.jpg"))[0]), "--requests", "6",
        "--concurrency", "2", "--threads", "2", "--torch-threads", "1", "--runtime", "pytorch",
        "--start-timeout", "600", "--output", str(out)])
    record = json.loads(out.read_text())
    assert status == 0 and record["result"]["counts"] == {"2xx": 6}
    assert record["model"]["inference_engine"] == "pytorch" and record["settings"]["runtime"] == "pytorch"


def test_load_test_soaks_beside_explanation_clients_and_samples_the_servers_memory(tmp_path, sample_dir):
    """A short soak while one client asks for Grad-CAM and one for SHAP: answers per method, RSS samples, no 5xx."""
    checkpoint = write_tiny_checkpoint(tmp_path / "model" / "best.ckpt")
    out = tmp_path / "results" / "load_test.json"
    status = load_script("load_test").main([
        "--model", str(checkpoint), "--image", str(sorted(sample_dir.glob("ISIC_*.jpg"))[0]), "--requests", "4",
        "--concurrency", "2", "--torch-threads", "1", "--runtime", "pytorch", "--shap-clients", "2",
        "--explain-methods", "gradcam", "shap", "--duration-minutes", "0.1", "--rss-interval", "1",
        "--explain-timeout", "60", "--start-timeout", "600", "--output", str(out)])   # 600: a busy shared machine
    result = json.loads(out.read_text())["result"]
    assert status == 0 and result["counts"] == {"2xx": 4}   # the run alone still sends --requests
    soak = result["with_explanations"]
    assert soak["duration_minutes"] == 0.1 and set(soak["counts"]) == {"2xx"} and soak["requests"] >= 1
    assert sum(minute["requests"] for minute in soak["per_minute"]) == soak["counts"]["2xx"]
    assert soak["latency_ms"]["p50"] <= soak["latency_ms"]["p95"] <= soak["latency_ms"]["p99"]
    by_method = result["explain_clients"]["by_method"]
    assert set(by_method) == {"gradcam", "shap"} and all(m["clients"] == 1 for m in by_method.values())
    for record in by_method.values():   # only answers the server may give under load: done, busy, too slow
        assert sum(record["counts"].values()) >= 1 and set(record["counts"]) <= {"200", "503", "504"}
        assert record["completed"] == record["counts"].get("200", 0)
        if record["completed"]:   # a busy machine may answer only 504s within the time limit
            assert 0 < record["latency_ms"]["p50"] <= record["latency_ms"]["p95"] <= record["latency_ms"]["max"]
    rss = result["rss"]
    assert len(rss["samples"]) >= 2 and all(mb > 0 for _, mb in rss["samples"])
    assert rss["start_mb"] <= rss["max_mb"] and "slope_mb_per_min" in rss and rss["flat_threshold_mb_per_min"] > 0
    summary = load_script("summarize").main(["--results", str(out.parent)]).read_text()
    assert "with 2 gradcam/shap clients, 0.1 min soak" in summary and "- shap explanations (1 clients)" in summary
    assert "- server RSS: start" in summary


class FakeServer(BaseHTTPRequestHandler):
    """Predictions answer 200; Grad-CAM answers 200, SHAP 503 with a short Retry-After: known answers per method."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        busy = self.path == "/api/explain" and b"\r\n\r\nshap\r\n" in body
        self.send_response(503 if busy else 200)
        if busy:
            self.send_header("Retry-After", "0.05")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_load_clients_cycle_the_methods_and_count_each_apart():
    load_clients = load_script("load_clients")
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with load_clients.ExplainClients(url, b"x", "x.jpg", 3, ["gradcam", "shap"], timeout=10) as clients:
            soak = load_clients.run_load(url, b"x", "x.jpg", 1, 2, 10, 10, duration_s=0.5)
    finally:
        server.shutdown()
        server.server_close()
    by_method = clients.summary()["by_method"]
    assert by_method["gradcam"]["clients"] == 2 and by_method["shap"]["clients"] == 1   # client i: methods[i % 2]
    gradcam, shap = by_method["gradcam"], by_method["shap"]
    assert set(gradcam["counts"]) == {"200"} and gradcam["completed"] == gradcam["counts"]["200"] >= 2
    assert gradcam["503"] == 0 and gradcam["latency_ms"]["p50"] <= gradcam["latency_ms"]["max"]
    assert set(shap["counts"]) == {"503"} and shap["503"] == shap["counts"]["503"] >= 1
    assert shap["completed"] == 0 and shap["latency_ms"] == {} and clients.failures() == 0
    # The soak ran on the clock (not the one --requests) and every answer falls in its first minute.
    assert soak["requests"] == soak["counts"]["2xx"] == soak["per_minute"][0]["requests"] > 1
    assert soak["status_codes"] == {"200": soak["requests"]} and soak["duration_minutes"] == round(0.5 / 60, 3)


class HalfBusyServer(BaseHTTPRequestHandler):
    """Every other prediction: 503 at once; the others 200 after 50 ms."""
    calls = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        HalfBusyServer.calls += 1
        busy = HalfBusyServer.calls % 2 == 0
        if not busy:
            time.sleep(0.05)
        self.send_response(503 if busy else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_percentiles_are_nearest_rank_and_only_served_predictions_are_timed():
    """round(x + 0.5) rounds halves to even: the p95 of 20 values was their maximum. And 503s, answered at
    once, were counted as served: shorter latencies and twice the throughput."""
    load_clients = load_script("load_clients")
    values = list(range(1, 21))
    assert load_clients.percentile(values, 95) == 19 and load_clients.percentile(values, 50) == 10
    assert load_clients.percentile(list(range(1, 15)), 50) == 7 and load_clients.percentile(list(range(1, 101)), 99) == 99
    assert load_clients.percentile([5.0], 95) == 5.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), HalfBusyServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = load_clients.run_load(f"http://127.0.0.1:{server.server_address[1]}", b"x", "x.jpg", 20, 1, 10, 60)
    finally:
        server.shutdown()
        server.server_close()
    assert result["counts"] == {"2xx": 10, "5xx": 10}
    assert result["latency_ms"]["p50"] >= 50 and result["latency_ms"]["mean"] >= 50   # the served ones only
    assert result["non_2xx_latency_ms"]["p50"] < 50
    assert result["requests_per_second"] == pytest.approx(10 / result["wall_seconds"], rel=0.02)


def test_a_short_last_bin_is_left_out_of_the_memory_floor_whatever_the_spacing():
    """int() of half a bin's samples asked for 2 of 6 when samples came 5.01 s apart: a last bin of two
    samples on a peak was kept and tilted the floor."""
    process_memory = load_script("process_memory")
    samples = [(t * 5.01, 100.0) for t in range(24)] + [(24 * 5.01, 900.0), (24 * 5.01 + 1, 900.0)]
    floor = process_memory.floor_samples(samples, 30.0)
    assert [mb for _, mb in floor] == [100.0] * 4


def test_a_table_shows_every_rows_keys():
    """Only the first row's keys became columns: the serve start-up rows' peak memory was dropped."""
    bench_common = load_script("bench_common")
    table = bench_common.format_table([{"runtime": "ort", "img_per_s": 16.1}, {"runtime": "serve", "seconds": 4.4,
                                                                              "peak_rss_mb": 930.1}])
    assert table.splitlines()[0] == "| runtime | img_per_s | seconds | peak_rss_mb |" and "930.1" in table


def test_memory_slope_ignores_the_first_half_of_the_window_and_transient_peaks():
    """Growth while warming up, then flat: the slope over the second half says flat; steady growth does not."""
    process_memory = load_script("process_memory")
    sampler = process_memory.RssSampler(pid=1, interval=10.0)
    sampler.samples = [(t, 100.0 + min(t, 290) / 10) for t in range(0, 600, 10)]   # +1 MB/min, then flat
    summary = sampler.summary(window=(0.0, 590.0))
    assert summary["slope_mb_per_min"] == 0 and summary["flat"] is True and summary["start_mb"] == 100.0
    assert summary["max_mb"] == summary["end_mb"] == 129.0 and summary["slope_samples"] == 30
    sampler.samples = [(t, 100.0 + 2 * t / 60) for t in range(0, 600, 10)]            # a leak of 2 MB/min
    assert sampler.summary()["slope_mb_per_min"] == pytest.approx(2.0) and sampler.summary()["flat"] is False
    assert sampler.summary()["floor_slope_mb_per_min"] == pytest.approx(2.0, abs=0.1)
    # Explanations' working memory: +700 MB for a few samples, later ones sampled more often; the floor
    # the process comes back to stays put, so it is flat although every sample's slope rises.
    sampler.samples = [(t, 2117.0 + (700.0 if t % 70 == 0 or (t > 450 and t % 30 == 0) else 0.0))
                       for t in range(0, 600, 5)]
    summary = sampler.summary(window=(0.0, 595.0))
    assert summary["slope_mb_per_min"] > 1 and summary["floor_slope_mb_per_min"] == 0 and summary["flat"] is True
    assert summary["floor_mb"] == [2117.0, 2117.0] and summary["floor_bins"] == 10
    # A last sample (taken when the sampler stops) on a peak, alone in its bin, does not tilt the floor.
    sampler.samples.append((600.5, 2817.0))
    assert sampler.summary(window=(0.0, 595.0))["floor_slope_mb_per_min"] == 0
    sampler.samples.pop()
    # ... and a leak under the same spikes is not.
    sampler.samples = [(t, mb + 3 * t / 60) for t, mb in sampler.samples]
    summary = sampler.summary(window=(0.0, 595.0))
    assert summary["floor_slope_mb_per_min"] == pytest.approx(3.0, abs=0.3) and summary["flat"] is False
    # The process running this test has resident memory, read from /proc.
    assert process_memory.process_tree_rss_mb(os.getpid()) > 1


def test_explain_cost_times_a_trained_model_as_served_and_skips_what_it_refuses(tmp_path, capsys):
    checkpoint = write_tiny_checkpoint(tmp_path / "run" / "best.ckpt", members=2)
    out = tmp_path / "explain_cost.json"
    load_script("explain_cost").main(["--model", str(checkpoint), "--methods", "gradcam,ablationcam",
                                      "--repeats", "1", "--shap-budgets", "", "--threads", "1", "--out", str(out)])
    document = read_result(out)
    assert [(row["setup"], row["method"], row["calls"]) for row in document["rows"]] == [("best.ckpt", "gradcam", 1)]
    assert document["rows"][0]["median_s"] > 0
    assert document["settings"]["methods"] == ["gradcam"] and document["settings"]["weights"] == "the model's"
    assert "ablationcam: not timed, the model refuses it" in capsys.readouterr().err


def test_fast_paths_times_both_paths_and_says_how_far_the_answers_moved(tmp_path, sample_dir):
    checkpoint = write_tiny_checkpoint(tmp_path / "run" / "best.ckpt", members=2)
    out = tmp_path / "fast_paths.json"
    load_script("fast_paths").main(["--model", str(checkpoint), "--jpegs", str(sample_dir), "--photos",
                                    str(sample_dir), "--images", "6", "--rounds", "1", "--tta", "on",
                                    "--runtime", "onnxruntime", "--out", str(out)])
    document = read_result(out)
    assert [row["task"].split(" ")[0] for row in document["rows"]] == ["predict", "predict", "evaluate,"]
    assert all(row["today"] > 0 and row["earlier path"] > 0 for row in document["rows"])
    settings = document["settings"]
    assert settings["today_runtime"] == "onnxruntime" and settings["runtime"] == "onnxruntime"
    # ONNX Runtime at fp32 gives the earlier PyTorch fp32 path's answers on every image.
    agreement = settings["agreement_with_earlier_path"]
    assert agreement["images"] == 6 and agreement["top_class_moved"] == 0
    assert agreement["max_abs_probability_change"] <= 1e-4


def test_summary_collects_results(tmp_path):
    bench_common = load_script("bench_common")
    bench_common.write_result("demo", [{"variant": "a", "p50_ms": 1.5}], {"x": 1}, ["a note"],
                              tmp_path / "demo.json")
    (tmp_path / "load_test.json").write_text(json.dumps({  # load_test.py's own format
        "finished": "t", "settings": {"model": "best.ckpt", "image": "/x/ISIC_1.jpg", "requests": 20, "concurrency": 4},
        "model": {"inference_engine": "onnxruntime"}, "git_commit": "abc1234",
        "machine": {"cpu": "Some CPU", "isa": ["avx2", "avx512_bf16"], "cpus": 2},
        "result": {"counts": {"2xx": 20}, "latency_ms": {"p50": 45.3, "p95": 65.3}, "requests_per_second": 9.5}}))
    (tmp_path / "load_test_old.json").write_text(json.dumps({  # written before load tests recorded their CPU
        "finished": "t", "settings": {"model": "old.ckpt", "image": "/x/ISIC_1.jpg"}, "result": {"counts": {}}}))
    (tmp_path / "other.json").write_text(json.dumps({"p50_ms": 3}))  # an unknown format, still listed
    summary = load_script("summarize").main(["--results", str(tmp_path)]).read_text()
    assert "## demo" in summary and "| a | 1.5 |" in summary and "- a note" in summary
    assert "## load_test (load_test.json)" in summary and "| best.ckpt | onnxruntime | 20 | 4 | 45.3 | 65.3 |" in summary
    assert "## other" in summary and "keys: p50_ms" in summary
    # Each result names its own machine: results of one folder come from different CPUs.
    sections = {block.split("\n", 1)[0]: block for block in summary.split("## ")[1:]}
    demo_machine = bench_common.machine_info()
    assert f"Machine: {demo_machine['cpu']}, {demo_machine['cores_available']} cores" in sections["demo (demo.json)"]
    assert "Machine: Some CPU, 2 cores (ISA avx2, avx512_bf16); git abc1234. Run t." in sections[
        "load_test (load_test.json)"]
    assert "Machine: CPU model not recorded" in sections["load_test (load_test_old.json)"]


def test_predict_throughput_times_each_runtime_and_the_server_start(tmp_path, sample_dir):
    checkpoint = write_tiny_checkpoint(tmp_path / "model" / "best.ckpt")
    result = load_script("predict_throughput").main([
        "--model", str(checkpoint), "--folder", str(sample_dir), "--batch-size", "16", "--threads", "1",
        "--repeats", "1", "--runtimes", "pytorch", "onnxruntime", "--out", str(tmp_path / "p.json")])
    rows = read_result(Path(result["path"]))["rows"]
    predicted = [r for r in rows if r["measure"] == "predict a folder"]
    assert [r["runtime"] for r in predicted] == ["pytorch", "onnxruntime"]
    assert all(r["images"] == 50 and r["failures"] == 0 for r in predicted)
    startup = {r["runtime"]: r for r in rows if r["measure"] == "serve start-up"}
    assert startup["ONNX only (explanations off)"]["torch_imported"] is False
    assert startup["full (checkpoint, explanations on)"]["torch_imported"] is True


def test_results_name_paths_as_any_reader_can_follow_them(tmp_path, monkeypatch):
    """A committed result must not carry the folders of the machine it ran on."""
    bench_common = load_script("bench_common")
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("DERMALENS_DATA", str(data))
    repo = bench_common.REPOSITORY
    settings = {"image": str(data / "sample" / "x.jpg"), "overrides": [f"data.path={data}"],
                "config": repo / "configs" / "demo.yaml", "home": str(Path.home() / "runs" / "best.ckpt"),
                "n": 3, "url": "http://127.0.0.1:8000/api/predict"}
    path = bench_common.write_result("portable", [{"model": str(repo / "runs" / "best.ckpt")}], settings,
                                     out=tmp_path / "result.json")
    document = json.loads(path.read_text())
    assert document["settings"] == {"image": "$DERMALENS_DATA/sample/x.jpg", "overrides": ["data.path=$DERMALENS_DATA"],
                                    "config": "configs/demo.yaml", "home": "~/runs/best.ckpt", "n": 3,
                                    "url": "http://127.0.0.1:8000/api/predict"}
    assert document["rows"] == [{"model": "runs/best.ckpt"}]
    # Not a path that merely contains one of those folders, nor a URL when a folder is at the root.
    monkeypatch.setattr(bench_common, "REPOSITORY", Path("/app"))
    home = str(Path.home())
    assert bench_common.portable(["/mnt" + home + "/x", "http://127.0.0.1:8000/api", home]) == \
        ["/mnt" + home + "/x", "http://127.0.0.1:8000/api", "~"]
    assert str(tmp_path) not in path.read_text().replace(str(path), "")


def test_suite_footprint_reports_the_peak_of_what_a_run_writes_and_removes_it(tmp_path):
    # A stand-in suite: one test that holds 30 MB in its temporary folder for a moment.
    (tmp_path / "test_writes.py").write_text(
        "import os, time\n"
        "def test_writes(tmp_path):\n"
        "    (tmp_path / 'blob').write_bytes(os.urandom(30_000_000))\n"
        "    time.sleep(1.0)\n")
    before = set(Path(tempfile.gettempdir()).glob("dermalens-suite-*"))
    out = tmp_path / "footprint.json"
    code = load_script("test_suite_footprint").main(["--every", "0.2", "--out", str(out), "--",
                                                     str(tmp_path / "test_writes.py"), "-p", "no:cacheprovider"])
    assert code == 0
    (row,) = read_result(out)["rows"]
    assert row["exit_code"] == 0 and "1 passed" in row["summary"]
    assert 30 <= row["peak_disk_mb"] < 200
    assert set(Path(tempfile.gettempdir()).glob("dermalens-suite-*")) == before   # its folder is gone


def test_cpu_time_is_of_the_timed_calls_only():
    """augmentation_throughput's CPU time per image took the median over the untimed warm-up batches too."""
    bench_common = load_script("bench_common")
    costs = iter([0.2] * 100)
    seen: list[int] = []

    def busy():
        seen.append(1)
        deadline = time.process_time() + next(costs) / 10
        while time.process_time() < deadline:
            pass

    cpu: dict[str, list[float]] = {}
    timings = bench_common.interleaved_timings({"a": busy}, calls=4, warmup=2, block=2, block_warmup=1,
                                               cpu_seconds=cpu)
    assert len(seen) == 2 + 2 * (1 + 2) and len(timings["a"]) == 4 and len(cpu["a"]) == 4
    assert all(seconds >= 0.015 for seconds in cpu["a"])
