"""The MLflow "models from code" file of a logged clipsr generator (no pickle anywhere).

MLflow copies this file into the model (``code/mlflow_pyfunc.py``) with the ``clipsr`` package
(``code_paths``) and the checkpoint directory (artifact ``checkpoint``: safetensors + config).
``mlflow.pyfunc.load_model(uri).predict(df, params={"scale": 4})`` (any scale the model serves)
takes a DataFrame with columns
``image`` (PNG/JPEG bytes, or base64 strings of them) and ``caption``, and returns one with
``sr_png`` (PNG bytes). Pick the device with ``model_config={"device": "cpu"}`` or
``CLIPSR_DEVICE``; the default is CUDA when available.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Any

import mlflow
import pandas as pd
from PIL import Image, UnidentifiedImageError


def decode_image(value: Any, row: int) -> Image.Image:
    """PNG/JPEG bytes, or a base64 string of them, as an RGB image; ValueError naming the row."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError(f"row {row}: 'image' is a string but not base64") from None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"row {row}: 'image' must be bytes or base64, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(bytes(value))) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"row {row}: cannot decode 'image' ({err})") from None


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class CLIPSRPyfuncModel(mlflow.pyfunc.PythonModel):
    """A :class:`clipsr.inference.SuperResolver` behind the pyfunc interface."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from clipsr.inference import SuperResolver

        config = context.model_config or {}
        device = config.get("device") or os.environ.get("CLIPSR_DEVICE") or None
        self.resolver = SuperResolver.from_checkpoint(context.artifacts["checkpoint"], device)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        scale = int((params or {}).get("scale") or self.resolver.scale)
        if scale not in self.resolver.scales:
            served = ", ".join(f"{s}x" for s in self.resolver.scales)
            raise ValueError(f"requested scale {scale} but this model upscales by {served}")
        missing = {"image", "caption"} - set(model_input.columns)
        if missing:
            raise ValueError(f"input is missing column(s): {', '.join(sorted(missing))}")
        out = []
        for row, (value, caption) in enumerate(zip(model_input["image"], model_input["caption"])):
            image = decode_image(value, row)
            self.resolver.check_size(*image.size, name=f"row {row}")
            prompt = "" if caption is None or pd.isna(caption) else str(caption)
            out.append(encode_png(self.resolver.upscale(image, prompt, scale)))
        return pd.DataFrame({"sr_png": out})


mlflow.models.set_model(CLIPSRPyfuncModel())
