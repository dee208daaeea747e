"""Evaluation on Ray Data: the units of :mod:`clipsr.evaluation` mapped over an actor pool.

Two passes over the units (rows of ``ray.data.from_items``): Ray tasks read each unit's captions
(no images), the driver derives the mismatched captions of the whole evaluated set, then
``map_batches`` with ``ActorPoolStrategy(size=num_actors)`` runs one unit per call on actors that
each load the model once. An actor computes a unit exactly as the local run does (the same
batches, ``torch.set_num_threads(threads)``), so both give the same numbers. Rows come back as
JSON strings (floats round-trip exactly).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clipsr.adherence import KIND as ADHERENCE_KIND
from clipsr.adherence import ShapeAttributes
from clipsr.evaluation import Unit, evaluate_unit, read_captions
from pipelines.storage import StorageOptions, open_read


@dataclass(frozen=True)
class WorkerSpec:
    """What every evaluating process needs to rebuild the model and read the shards."""

    model_uri: str
    tracking_uri: str
    device: str
    threads: int
    batch_size: int
    crop_border: int
    grid_rows: int
    lpips_backbone_weights: str = ""
    lpips_linear_weights: str = ""
    endpoint_url: str = ""
    # The shard set's attribute declaration (manifest "attributes", JSON) for prompt adherence.
    attributes: str = ""


def shape_attributes(declaration: str) -> ShapeAttributes | None:
    """The parsed declaration (a manifest's ``attributes`` as JSON) when it is one that prompt
    adherence understands, else None."""
    data = json.loads(declaration) if declaration else None
    if not isinstance(data, dict) or data.get("kind") != ADHERENCE_KIND:
        return None
    return ShapeAttributes.from_dict(data)


def opener_for(endpoint_url: str):
    """``opener(url)``: a binary file of a local or s3:// shard."""
    return functools.partial(_open, endpoint_url=endpoint_url)


def _open(url: str, endpoint_url: str):
    return open_read(url, StorageOptions(endpoint_url=endpoint_url))


class UnitEvaluator:
    """Loads the model (and LPIPS) once; ``run(unit, mismatched)`` gives the unit's rows."""

    def __init__(self, spec: WorkerSpec, resolver: Any = None):
        import torch

        from clipsr.metrics import LPIPS

        self.spec = spec
        torch.set_num_threads(spec.threads)
        if resolver is None:
            from jobs.tracking import load_resolver

            resolver = load_resolver(
                spec.model_uri, spec.device, tracking_uri=spec.tracking_uri or None
            )
        self.resolver = resolver
        self.lpips = None
        if spec.lpips_backbone_weights and spec.lpips_linear_weights:
            lpips = LPIPS(spec.lpips_backbone_weights, spec.lpips_linear_weights)
            self.lpips = lpips.to(resolver.device)
        self.opener = opener_for(spec.endpoint_url)
        self.attributes = shape_attributes(spec.attributes)

    def run(self, unit: Unit, mismatched: list[str]) -> list[dict[str, Any]]:
        s = self.spec
        return evaluate_unit(
            self.resolver,
            unit,
            mismatched,
            self.opener,
            s.batch_size,
            s.crop_border,
            s.grid_rows,
            self.lpips,
            self.attributes,
        )


class _Actor:
    def __init__(self, spec: dict):
        self.evaluator = UnitEvaluator(WorkerSpec(**spec))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for url, start, count, wrong in zip(
            batch["url"], batch["start"], batch["count"], batch["mismatched"], strict=True
        ):
            unit = Unit(str(url), int(start), int(count))
            out += [json.dumps(r) for r in self.evaluator.run(unit, json.loads(str(wrong)))]
        return {"row": np.array(out, dtype=object)}


def _captions_row(row: dict[str, Any], endpoint_url: str) -> dict[str, Any]:
    unit = Unit(row["url"], int(row["start"]), int(row["count"]))
    pairs = read_captions(unit, opener_for(endpoint_url))
    return {**row, "captions": json.dumps([c for _, c in pairs])}


def _ray(address: str):
    from pipelines.ray_cluster import init_ray

    return init_ray(address, log_to_driver=False)


def read_captions_ray(units: list[Unit], endpoint_url: str, ray_address: str = "") -> list[str]:
    """The first captions of all units' samples, in order (Ray tasks, one unit each)."""
    ray = _ray(ray_address)
    items = [asdict(u) for u in units]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(_captions_row, fn_kwargs={"endpoint_url": endpoint_url}, num_cpus=0.5)
    rows = sorted(ds.take_all(), key=lambda r: int(r["start"]))
    return [c for r in rows for c in json.loads(r["captions"])]


def pool_size(ray: Any, num_actors: int, units: int, spec: WorkerSpec) -> int:
    """``num_actors``, at most one per unit, and no more than the cluster holds now (a fixed pool
    larger than the cluster would wait for ever); a cluster with none yet may autoscale."""
    size = max(1, min(num_actors, units))
    total = ray.cluster_resources()
    fits = int(total.get("CPU", 0) // spec.threads)
    if spec.device.startswith("cuda"):
        fits = min(fits, int(total.get("GPU", 0)))
    return min(size, fits) if fits >= 1 else size


def evaluate_ray(
    units: list[Unit],
    mismatched: list[str],
    spec: WorkerSpec,
    num_actors: int,
    ray_address: str = "",
) -> list[dict[str, Any]]:
    """Rows of all units from ``num_actors`` actors (each ``threads`` CPUs, one GPU when the
    device is cuda), sorted by sample index."""
    ray = _ray(ray_address)
    items = [
        {**asdict(u), "mismatched": json.dumps(mismatched[u.start : u.start + u.count])}
        for u in units
    ]
    gpus = 1 if spec.device.startswith("cuda") else 0
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        _Actor,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool_size(ray, num_actors, len(units), spec)),
        fn_constructor_kwargs={"spec": asdict(spec)},
        num_cpus=spec.threads,
        num_gpus=gpus,
    )
    rows = [json.loads(r["row"]) for r in ds.take_all()]
    return sorted(rows, key=lambda r: r["index"])
