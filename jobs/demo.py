"""``clipsr demo [CONFIG] [a.b=value ...]``: the whole pipeline on bundled data, on this machine.

Stages: write the bundled corpora (photo tiles; the generated shapes set) -> shard them with
``clipsr preprocess`` (Ray Data) -> train the tiny 4x model on the photos and the tiny 16x model
on the shapes (Ray Train, MLflow) -> evaluate both on held-out data (with the caption ablation)
-> promote each to ``champion`` -> upscale the held-out images from the registry, with prompt
editing. Local Ray, an embedded MLflow store and local disk by default; ``storage=s3://...``,
``tracking_uri=http://...`` and ``ray_address=...`` run the same stages against real services.
A second run reuses the stages that finished (``<workdir>/demo_state.json``); ``fresh=true``
starts over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from jobs import console
from jobs.demo_config import ROOT, DemoConfig, DemoModelConfig, load_demo_config
from jobs.demo_summary import (
    MODELS,
    SUMMARY,
    checks,
    edited_prompts,
    format_summary,
    stage_details,
    stage_line,
)
from jobs.ray_setup import train_runtime_env

log = logging.getLogger("clipsr.demo")
STATE = "demo_state.json"
PROG = "clipsr demo"


def _path(path: str) -> str:
    return path if Path(path).is_file() else str(ROOT / path)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class DemoStageFailed(RuntimeError):
    """A stage ran but did not reach its goal (e.g. promotion gates refused the model)."""


class Stages:
    """Runs named stages once: a stage whose fingerprint matches a finished one is reused."""

    def __init__(self, workdir: Path, fresh: bool):
        self.path = workdir / STATE
        self.state = {} if fresh or not self.path.is_file() else json.loads(self.path.read_text())
        self.times: dict[str, float] = {}

    def run(self, name: str, fingerprint: str, fn: Callable[[], dict]) -> dict:
        """Run (or reuse) a stage; print its line (and table: jobs/demo_summary.py)."""
        done = self.state.get(name)
        if done and done.get("fingerprint") == fingerprint:
            self.times[name] = 0.0
            self._show(name, done["result"], "reused")
            return done["result"]
        start = time.perf_counter()
        result = fn()
        self.times[name] = time.perf_counter() - start
        self.state[name] = {"fingerprint": fingerprint, "result": result}
        self.path.write_text(json.dumps(self.state, indent=2, sort_keys=True))
        self._show(name, result, f"{self.times[name]:.0f} s")
        return result

    @staticmethod
    def _show(name: str, result: dict, when: str) -> None:
        details = stage_details(name, result)
        print(f"stage {name}: {stage_line(name, result)} ({when}){details}", flush=True)


class Demo:
    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.workdir = Path(cfg.workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage = cfg.storage.rstrip("/") or str(self.workdir)
        self.tracking_uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if not self.tracking_uri:
            self.tracking_uri = f"sqlite:///{self.workdir / 'mlflow.db'}"
        self.stages = Stages(self.workdir, cfg.fresh)
        if cfg.fresh:
            self._forget_training()
        self.outputs = self.workdir / "outputs"

    def _forget_training(self) -> None:
        """Delete the demo's training runs (their checkpoints), so that a fresh demo trains
        from scratch instead of Ray Train resuming the finished run. Shards are kept: they
        are a pure function of the corpus and the config, and preprocessing reuses them."""
        from jobs.train_config import load_train_config
        from pipelines import storage
        from pipelines.storage import StorageOptions

        opts = StorageOptions(endpoint_url=self.cfg.endpoint_url)
        from jobs.pretrain_clip_config import load_pretrain_clip_config

        names = []
        for corpus in MODELS:
            model = getattr(self.cfg, corpus)
            names.append(load_train_config(_path(model.train_config)).run.name)
            if model.clip_config:
                names.append(load_pretrain_clip_config(_path(model.clip_config)).run.name)
        for name in names:
            run_dir = self._join("runs", name)
            log.debug("fresh: deleting the training run %s", run_dir)
            if not storage.is_remote(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
                continue
            for uri in storage.list_files(run_dir, opts):
                storage.delete(uri, opts)

    def _join(self, *parts: str) -> str:
        return "/".join([self.storage, *parts])

    # -- stages ---------------------------------------------------------------------------
    def corpora(self) -> dict:
        from pipelines.bundled_corpus import write_photo_tiles, write_shapes

        cfg = self.cfg
        return {
            "photos": write_photo_tiles(self.workdir / "corpus" / "photos", 128, cfg.photo_stride),
            "shapes": write_shapes(
                self.workdir / "corpus" / "shapes", cfg.shapes_train, cfg.shapes_test
            ),
        }

    def preprocess(self, corpus: str, model: DemoModelConfig) -> dict:
        from pipelines.preprocess import run_preprocess
        from pipelines.preprocess_config import load_preprocess_config

        pcfg = load_preprocess_config(
            _path(model.preprocess_config),
            [
                f"source.path={self.workdir / 'corpus' / corpus}",
                f"output={self._join('shards', corpus)}",
                f"storage.endpoint_url={self.cfg.endpoint_url}",
                f"ray_address={self.cfg.ray_address}",
            ],
        )
        summary = run_preprocess(pcfg, progress=True)
        return {
            "shards": pcfg.output,
            "written": summary.total_written,
            "rejected": summary.rejected,
        }

    def pretrain_clip(self, model: DemoModelConfig, shards: str) -> dict:
        """The corpus's domain CLIP (clipsr pretrain-clip), for the model's CLIP."""
        from jobs.pretrain_clip import run_pretrain_clip
        from jobs.pretrain_clip_config import load_pretrain_clip_config

        overrides = [
            f"data.shards={shards}",
            f"data.endpoint_url={self.cfg.endpoint_url}",
            f"run.storage_path={self._join('runs')}",
            f"run.ray_address={self.cfg.ray_address}",
            f"tracking.tracking_uri={self.tracking_uri}",
        ]
        if model.clip_steps:
            overrides.append(f"run.steps={model.clip_steps}")
        ccfg = load_pretrain_clip_config(_path(model.clip_config), overrides)
        ccfg.output = str(self.workdir / "clip" / f"{ccfg.run.name}.safetensors")
        result = run_pretrain_clip(ccfg)
        return {
            "weights": result.output,
            "registered": result.registered,
            "run_id": result.run_id,
            "metrics": result.metrics,
        }

    def train(self, corpus: str, model: DemoModelConfig, shards: str, clip: dict) -> dict:
        from jobs.train import configured_clip_weights, run_train
        from jobs.train_config import load_train_config

        overrides = [
            f"data.shards={shards}",
            f"data.endpoint_url={self.cfg.endpoint_url}",
            f"run.storage_path={self._join('runs')}",
            f"run.num_workers={self.cfg.num_workers}",
            f"run.ray_address={self.cfg.ray_address}",
            f"tracking.tracking_uri={self.tracking_uri}",
        ]
        if model.steps:
            overrides.append(f"run.steps={model.steps}")
        if clip:
            overrides.append(f"model.clip.checkpoint={clip['weights']}")
        tcfg = load_train_config(_path(model.train_config), overrides)
        result = run_train(tcfg)
        if result.model_version is None:
            raise DemoStageFailed(f"training {corpus} registered no model version")
        return {
            "run_id": result.run_id,
            "model_uri": result.model_uri,
            "steps": int(result.metrics.get("step", 0)),
            "checkpoint": result.checkpoint,
            "registered_model": tcfg.tracking.registered_model,
            "version": result.model_version,
            "clip_weights": configured_clip_weights(tcfg.model.clip),
            "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        }

    def evaluate(self, corpus: str, trained: dict, shards: str) -> dict:
        from jobs.evaluate import run_evaluate
        from jobs.evaluate_config import load_evaluate_config

        uri = f"models:/{trained['registered_model']}/{trained['version']}"
        ecfg = load_evaluate_config(
            None,
            [
                f"model={uri}",
                f"shards={shards}",
                f"out={self.outputs / 'evaluation' / corpus}",
                f"tracking_uri={self.tracking_uri}",
                f"endpoint_url={self.cfg.endpoint_url}",
                f"limit={self.cfg.eval_limit}",
            ],
        )
        result = run_evaluate(ecfg, log=log.debug)  # the stage's line says it
        return {
            "model_uri": uri,
            "run_id": result.run_id,
            "json": str(result.json_path),
            "report": str(result.report_path),
            "metrics": result.metrics,
        }

    def promote(self, model: DemoModelConfig, trained: dict) -> dict:
        from jobs.promote import format_gates, run_promote
        from jobs.promote_config import load_promote_config

        pcfg = load_promote_config(
            _path(model.promote_config),
            [
                f"model={trained['registered_model']}",
                f"version={trained['version']}",
                f"tracking_uri={self.tracking_uri}",
                "reason=clipsr demo",
            ],
        )
        result = run_promote(pcfg)
        gates = format_gates(result.gates)
        if result.action not in ("promoted", "first_champion", "noop"):
            print(gates, flush=True)  # the table that refused it
            reasons = "; ".join(result.reasons)
            raise DemoStageFailed(
                f"promotion of {trained['registered_model']} version {trained['version']} was "
                f"refused: {reasons} (gates: {model.promote_config})"
            )
        return {
            "action": result.action,
            "alias": f"{trained['registered_model']}@champion",
            "version": trained["version"],
            "gates": gates,
        }

    def upscale(self, corpus: str, model: DemoModelConfig, trained: dict, shards: str) -> dict:
        from jobs.tracking import load_resolver
        from pipelines.batch_upscale import run_batch_upscale

        uri = f"models:/{trained['registered_model']}@champion"
        out = self.outputs / "upscaled" / corpus
        batch = run_batch_upscale(
            model_uri=uri,
            shards=shards,
            split="test",
            out=str(out),
            tracking_uri=self.tracking_uri,
            endpoint_url=self.cfg.endpoint_url,
        )
        resolver = load_resolver(uri, "cpu", tracking_uri=self.tracking_uri)
        grid = self._prompt_grid(resolver, corpus, model, shards, out)
        return {"model_uri": uri, "written": batch.written, "out": str(out), "grid": grid}

    def _prompt_grid(self, resolver, corpus: str, model: DemoModelConfig, shards: str, out: Path):
        from clipsr.inference import prompt_grid, tensor_to_image
        from clipsr.shard_dataset import iter_eval_batches, read_dataset_manifest, shard_urls
        from pipelines import storage
        from pipelines.storage import StorageOptions

        opts = StorageOptions(endpoint_url=self.cfg.endpoint_url)
        manifest = read_dataset_manifest(shards, lambda u: storage.read_bytes(u, opts))
        urls = shard_urls(shards, "test", manifest)
        batch = next(iter_eval_batches(urls, resolver.scale, 1, limit=1, opener=_opener(opts)))
        lr, hr = tensor_to_image(batch["lr"][0]), tensor_to_image(batch["hr"][0])
        texts = edited_prompts(model.prompts, model.prompt_swaps, batch["captions"][0])
        results, scores = resolver.prompt_edit(lr, texts)
        verdicts = _verdicts(manifest.get("attributes"), texts, results, hr)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{corpus}_prompt_editing.png"
        label = f"CLIP: {resolver.clip.weights_source}"
        prompt_grid(lr, results, texts, scores, hr, verdicts, label).save(path)
        return str(path)

    # -- the pipeline ---------------------------------------------------------------------
    def _model_stages(self, corpus: str, scale: int, counts: dict) -> dict:
        """Shard, train, evaluate, promote and upscale the model of one corpus."""
        cfg, st = self.cfg, self.stages
        model: DemoModelConfig = getattr(cfg, corpus)
        pre = st.run(
            f"preprocess {corpus}",
            _fingerprint(counts, self.storage, _read(model.preprocess_config)),
            lambda: self.preprocess(corpus, model),
        )
        shards = pre["shards"]
        clip: dict = {}
        if model.clip_config:
            clip = st.run(
                f"pretrain-clip {corpus}",
                _fingerprint(pre, _read(model.clip_config), model.clip_steps),
                lambda: self.pretrain_clip(model, shards),
            )
        train_fp = _fingerprint(pre, clip, _read(model.train_config), model.steps, cfg.num_workers)
        trained = st.run(
            f"train x{scale}", train_fp, lambda: self.train(corpus, model, shards, clip)
        )
        evaluated = st.run(
            f"evaluate x{scale}",
            _fingerprint(trained, cfg.eval_limit),
            lambda: self.evaluate(corpus, trained, shards),
        )
        promoted = st.run(
            f"promote x{scale}",
            _fingerprint(trained, _read(model.promote_config)),
            lambda: self.promote(model, trained),
        )
        upscaled = st.run(
            f"upscale x{scale}",
            _fingerprint(trained, model.prompts, model.prompt_swaps),
            lambda: self.upscale(corpus, model, trained, shards),
        )
        return {
            "scale": scale,
            "preprocess": pre,
            "clip": clip,
            "train": trained,
            "evaluate": evaluated,
            "promote": promoted,
            "upscale": upscaled,
        }

    def run(self) -> dict:
        from pipelines.ray_cluster import init_ray

        cfg = self.cfg
        init_ray(
            cfg.ray_address,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env=train_runtime_env({"OMP_NUM_THREADS": "1"}, dashboard=False),
        )
        console.ray_data_progress(ours=True)  # preprocess and upscale show their own bars
        st = self.stages
        corpora = st.run(
            "corpus",
            _fingerprint(cfg.shapes_train, cfg.shapes_test, cfg.photo_stride),
            self.corpora,
        )
        results: dict[str, Any] = {"corpus": corpora}
        for corpus, scale in MODELS.items():
            results[corpus] = self._model_stages(corpus, scale, corpora[corpus])
        results["seconds"] = {k: round(v, 1) for k, v in st.times.items()}
        results["checks"] = checks(results)
        results["tracking_uri"] = self.tracking_uri
        (self.workdir / SUMMARY).write_text(json.dumps(results, indent=2))
        return results


def _verdicts(attributes: dict | None, prompts: list[str], results: list, hr) -> list | None:
    """The shape the adherence classifier sees in each result (majority over the objects), for
    sets that declare attributes; None otherwise."""
    import numpy as np

    from clipsr.adherence import KIND, ShapeAttributes

    if not attributes or attributes.get("kind") != KIND:
        return None
    attrs = ShapeAttributes.from_dict(attributes)
    truth = np.asarray(hr)
    out = []
    for prompt, image in zip(prompts, results):
        parsed = attrs.parse(prompt)
        if parsed is None:
            out.append(None)
            continue
        occupied = attrs.occupied(truth, parsed.background)
        labels = attrs.classify(np.asarray(image), parsed.colour, parsed.background, occupied)
        valid = labels[labels >= 0]
        out.append(attrs.shapes[int(np.bincount(valid).argmax())] if valid.size else None)
    return out


def _read(path: str) -> str:
    return Path(_path(path)).read_text()


def _opener(opts):
    from pipelines import storage

    return lambda url: storage.open_read(url, opts)


def build_parser() -> console.Parser:
    parser = console.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_optional_config(
        "optional YAML (fields of jobs/demo_config.py)", "overrides such as workdir=/tmp/demo"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless every check of the summary passed"
    )
    return parser


@console.command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_demo_config(args.config, args.overrides)
    workdir = Path(cfg.workdir).resolve()
    print(
        f"clipsr demo in {workdir} (storage {cfg.storage or workdir}; MLflow "
        f"{cfg.tracking_uri or os.environ.get('MLFLOW_TRACKING_URI') or 'embedded'}; "
        f"Ray {cfg.ray_address or os.environ.get('RAY_ADDRESS') or 'local'}); settings: "
        "clipsr config show demo",
        flush=True,
    )
    from clipsr.checkpoint import CheckpointError
    from jobs.console_noise import BUDGET, Transcript, measure
    from jobs.tracking import ModelNotFound, TrackingUnavailable
    from jobs.train import TrainingFailed

    transcript = Transcript() if args.check else contextlib.nullcontext()
    try:
        with transcript:
            results = Demo(cfg).run()
    except (DemoStageFailed, TrainingFailed, TrackingUnavailable, ModelNotFound) as err:
        return console.fail(PROG, f"{err} (a rerun reuses the stages that finished)", 1)
    except CheckpointError as err:
        return console.fail(PROG, err, 2)
    if args.check:  # the console itself is checked: quiet by default
        noise = measure(transcript.text())
        results["checks"][f"console: known library noise below {BUDGET:.0%}"] = noise.share < BUDGET
        results["console_noise"] = noise.describe()
    print(format_summary(results, workdir))
    if args.check and not all(results["checks"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
