"""What a user sees in the MLflow UI for a training run logged the way ``clipsr train`` logs it:
the run page lists the shard sets under Datasets, and the metric charts group by their
``loss/``, ``perf/`` and ``val/`` prefixes. Rendered by a real ``mlflow server`` in headless
Chromium (Debian's, driven by Playwright); skipped without it unless CLIPSR_REQUIRE_BROWSER=1.
Set CLIPSR_SCREENSHOTS=DIR to keep the screenshots."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow
from mlflow.entities import Metric

from jobs.mlflow_record import run_context_tags, shard_set_input
from tests.jobs.test_eval_report import CHROMIUM_ARGS, _playwright_or_skip

MANIFEST = {
    "format_version": 1,
    "hr_size": 128,
    "scales": [4],
    "shards": [
        {"split": "train", "tar": "train-000000.tar", "samples": 229},
        {"split": "test", "tar": "test-000000.tar", "samples": 18},
    ],
}
SHA = "3f" * 32
METRICS = ("loss/g_loss", "loss/d_loss", "loss/l1", "perf/images_per_s", "val/psnr")


def _training_run(uri: str) -> tuple[str, str]:
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("clipsr-pages")
    run = client.create_run(exp, tags=run_context_tags({}), run_name="tiny-x4")
    shards = "/data/shards/photos"
    client.log_inputs(
        run.info.run_id,
        datasets=[
            shard_set_input(shards, "train", MANIFEST, SHA, "training"),
            shard_set_input(shards, "test", MANIFEST, SHA, "validation"),
        ],
    )
    rows = [
        Metric(key, 1.0 / (step + k + 1), 1_700_000_000_000 + step, step)
        for step in range(1, 21)
        for k, key in enumerate(METRICS)
    ]
    client.log_batch(run.info.run_id, metrics=rows)
    client.set_terminated(run.info.run_id)
    return exp, run.info.run_id


def test_the_run_page_shows_the_datasets_and_grouped_charts(mlflow_server, tmp_path):
    sync_playwright = _playwright_or_skip()
    exp, run_id = _training_run(mlflow_server.uri)
    shots = Path(os.environ.get("CLIPSR_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page_url = f"{mlflow_server.uri}/#/experiments/{exp}/runs/{run_id}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(page_url)
        # "Datasets": the train split by name and digest, with its context; the test split too
        page.get_by_text(f"photos/train ({SHA[:20]}").first.wait_for(timeout=60_000)
        page.get_by_text("Datasets", exact=True).first.wait_for(timeout=10_000)
        page.get_by_text(re.compile(r"^training$", re.I)).first.wait_for(timeout=10_000)
        page.screenshot(path=str(shots / "mlflow-run-overview.png"))
        page.goto(f"{page_url}/model-metrics")
        for group in ("loss (3)", "perf (1)", "val (1)"):  # one section per prefix
            page.get_by_text(group, exact=True).first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "mlflow-run-charts.png"))
        browser.close()
