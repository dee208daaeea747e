"""The reference release's training state (``state_epoch_*.pth``) as clipsr weights: a name map.

The reference saves ``{"model": {"netG", "netD", "netC"}, "optimizers", "scalers", "epoch"}``
with ``torch.save`` (keys with a ``module.`` prefix when saved from DDP). Every tensor clipsr
needs is there under another name, with the same shape: no weight is reshaped. This module is
the map and its checks (no I/O besides :func:`read_reference_file`); ``jobs/convert_reference.py``
builds the models and writes the clipsr checkpoint.

Where each part goes:

- ``netG`` -> the ``generator`` (image encoder ``c1..c4``/``R``, refinement stages
  ``GBlocks.0-3``, reconstruction head ``head``/``conv_after_body``/``conv_before_upsample``/
  ``upsample``/``tail``, and the CLIP branch ``TBlocks``/``mapping.{fc_prompt,conv_fuse,conv}``);
  ``mapping.CLIP_ViT.*`` (the frozen ViT trunk: no ``ln_post``/``proj``) -> CLIP's ``visual.*``;
- ``netD`` -> the ``discriminator``'s blocks, ``netC`` -> its ``text_head``.
- Dropped, as modules the reference builds but never runs: ``fc_code``, ``mapping.FBlocks``,
  ``GBlocks.4-5``, ``to_rgb`` (netG) and the ``conv_s`` shortcuts of netD's equal-width blocks.

``TBlocks`` (conv -> DFBLK -> conv -> DFBLK) is placed by shape into clipsr's image-fusion block,
which modulates before it convolves (see :class:`clipsr.generator.ClipFusionPath`): the
reference never trained that branch (its output is unused), and the ``release`` wiring, the one
that reproduces the reference's outputs, does not run it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipsr.config import CLIPSRConfig
from clipsr.config_loader import ConfigError, from_dict

PARTS = ("netG", "netD", "netC")
TARGETS = ("generator", "discriminator", "clip")
# Placeholders of the rule templates below and what they match.
_FIELDS = {"k": r"[0-3]", "n": r"\d+", "p": r"weight|bias", "g": r"gamma|beta", "rest": r".+"}


def _affine_rules(ref: str, ours: str) -> list[tuple[str, str]]:
    """A DFBLK's two affines (``affine0/1.fc_gamma/beta.linear1/2``) -> clipsr's two TIFBlock
    affines (``affine1/2.gamma/beta.0/2``)."""
    return [
        (f"{ref}.affine{a}.fc_{{g}}.linear{lin}.{{p}}", f"{ours}.affine{a + 1}.{{g}}.{idx}.{{p}}")
        for a in (0, 1)
        for lin, idx in ((1, 0), (2, 2))
    ]


# (reference part, reference key, clipsr part, clipsr key), as templates with {placeholders}.
RULES: list[tuple[str, str, str, str]] = [
    ("netG", "c{n}.{p}", "generator", "image_encoder.conv{n}.{p}"),  # c1..c4
    ("netG", "R.weight", "generator", "image_encoder.act.weight"),  # the shared PReLU
    ("netG", "head.0.{p}", "generator", "head.lr_skip.{p}"),
    ("netG", "conv_after_body.{n}.{p}", "generator", "head.body.{n}.{p}"),
    ("netG", "conv_before_upsample.0.{p}", "generator", "head.before_upsample.0.{p}"),
    ("netG", "upsample.{n}.{p}", "generator", "head.upsample.{n}.{p}"),
    ("netG", "tail.0.{p}", "generator", "head.to_rgb.{p}"),
    ("netG", "GBlocks.{k}.c1.{p}", "generator", "refinement.stages.{k}.fuse1.conv.{p}"),
    ("netG", "GBlocks.{k}.c2.{p}", "generator", "refinement.stages.{k}.fuse2.conv.{p}"),
    ("netG", "GBlocks.{k}.c_sc.{p}", "generator", "refinement.stages.{k}.shortcut.{p}"),
    *(
        ("netG", ref, "generator", ours)
        for f in (1, 2)
        for ref, ours in _affine_rules(f"GBlocks.{{k}}.fuse{f}", f"refinement.stages.{{k}}.fuse{f}")
    ),
    # TBlocks (M_Block: conv1 -> fuse1 -> conv2 -> fuse2) by shape into the TIFBlock order
    ("netG", "TBlocks.conv1.{p}", "generator", "clip_fusion.image_fusion.fuse1.conv.{p}"),
    ("netG", "TBlocks.conv2.{p}", "generator", "clip_fusion.image_fusion.fuse2.conv.{p}"),
    *(
        ("netG", ref, "generator", ours)
        for ref_f, our_f in ((2, 1), (1, 2))
        for ref, ours in _affine_rules(
            f"TBlocks.fuse{ref_f}", f"clip_fusion.image_fusion.fuse{our_f}"
        )
    ),
    ("netG", "mapping.fc_prompt.{p}", "generator", "clip_fusion.prompt_predictor.proj.{p}"),
    ("netG", "mapping.conv_fuse.{p}", "generator", "clip_fusion.to_vit.{p}"),
    ("netG", "mapping.conv.{p}", "generator", "clip_fusion.from_vit.{p}"),
    ("netG", "mapping.CLIP_ViT.{rest}", "clip", "visual.{rest}"),
    ("netD", "DBlocks.{n}.{g}", "discriminator", "blocks.{n}.{g}"),
    ("netD", "DBlocks.{n}.conv_r.{k}.weight", "discriminator", "blocks.{n}.residual.{k}.weight"),
    ("netD", "main.gamma", "discriminator", "final_block.gamma"),
    ("netD", "main.conv_r.{k}.weight", "discriminator", "final_block.residual.{k}.weight"),
    ("netD", "main.conv_s.{p}", "discriminator", "final_block.shortcut.{p}"),
    ("netC", "joint_conv.{k}.weight", "discriminator", "text_head.net.{k}.weight"),
]
# Modules the reference builds but never runs: (part, key pattern, module name for the summary).
DROPPED: list[tuple[str, str, str]] = [
    ("netG", r"fc_code\..+", "fc_code"),
    ("netG", r"mapping\.FBlocks\..+", "mapping.FBlocks"),
    ("netG", r"GBlocks\.([4-9]|\d\d+)\..+", "GBlocks.4-5"),
    ("netG", r"to_rgb\..+", "to_rgb"),
    ("netD", r"DBlocks\.\d+\.conv_s\..+", "DBlocks.*.conv_s"),
]


def _regex(template: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos : m.start()]) + f"(?P<{m.group(1)}>{_FIELDS[m.group(1)]})"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + r"\Z")


_FORWARD = [(part, _regex(ref), target, ours) for part, ref, target, ours in RULES]
_BACKWARD = [(target, _regex(ours), part, ref) for part, ref, target, ours in RULES]
_DROPPED = [(part, re.compile(pattern + r"\Z"), name) for part, pattern, name in DROPPED]


def clipsr_name(part: str, key: str) -> tuple[str, str] | None:
    """``(clipsr part, clipsr key)`` of a reference key, or None when no rule places it."""
    for rule_part, regex, target, template in _FORWARD:
        m = regex.match(key) if rule_part == part else None
        if m:
            return target, template.format(**m.groupdict())
    return None


def reference_name(target: str, key: str) -> str | None:
    """``"netG.c1.weight"`` for ``("generator", "image_encoder.conv1.weight")``, or None."""
    for rule_target, regex, part, template in _BACKWARD:
        m = regex.match(key) if rule_target == target else None
        if m:
            return f"{part}.{template.format(**m.groupdict())}"
    return None


def dropped_module(part: str, key: str) -> str | None:
    """The name of the never-used reference module that ``key`` belongs to, or None."""
    return next((name for p, rx, name in _DROPPED if p == part and rx.match(key)), None)


class ReferenceFormatError(ValueError):
    """The file is not a reference checkpoint this converter can place (one line, no trace)."""


@dataclass
class Conversion:
    """The clipsr state dicts (``generator``, ``discriminator``, ``clip`` = the ViT trunk) and
    what happened to every reference key."""

    weights: dict[str, dict[str, torch.Tensor]]
    sources: dict[str, dict[str, str]]  # clipsr part -> clipsr key -> "netG.<key>"
    dropped: dict[str, list[str]] = field(default_factory=dict)  # module -> "netG.<key>"s
    unplaced: list[str] = field(default_factory=list)  # "netG.<key>" matching no rule or model
    counts: dict[str, int] = field(default_factory=dict)  # reference part -> keys read

    @property
    def placed(self) -> int:
        return sum(len(w) for w in self.weights.values())


def strip_module_prefix(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Keys without DDP's ``module.`` prefix; True when there was one."""
    if not any(k.startswith("module.") for k in state):
        return dict(state), False
    return {k.removeprefix("module."): v for k, v in state.items()}, True


def read_reference_file(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """``({"netG": ..., "netD": ..., "netC": ...}, info)`` from a reference ``.pth``, loaded
    with ``torch.load(weights_only=True)``; ``info`` has the epoch and whether prefixes were
    stripped. Raises :class:`ReferenceFormatError` (or FileNotFoundError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (not a zip/pickle), EOFError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReferenceFormatError(
            f"{path}: cannot be read with torch.load(weights_only=True), which accepts only "
            f"tensors, dicts, lists and numbers ({first[:200]})"
        ) from None
    models = data.get("model", data) if isinstance(data, dict) else None
    missing = [p for p in PARTS if not isinstance((models or {}).get(p), dict)]
    if missing:
        found = sorted(models) if isinstance(models, dict) else type(data).__name__
        raise ReferenceFormatError(
            f"{path}: not a CLIP-SR reference checkpoint: no {', '.join(missing)} state dict "
            f"(expected {{'model': {{'netG', 'netD', 'netC'}}}}, found {found})"
        )
    parts, stripped = {}, False
    for part in PARTS:
        state = models[part]
        bad = [k for k, v in state.items() if not torch.is_tensor(v)]
        if bad:
            raise ReferenceFormatError(f"{path}: {part}.{bad[0]} is not a tensor")
        parts[part], had = strip_module_prefix(state)
        stripped |= had
    epoch = data.get("epoch") if isinstance(data, dict) else None
    return parts, {"epoch": epoch if isinstance(epoch, int) else None, "module_prefix": stripped}


def convert(
    reference: dict[str, dict[str, torch.Tensor]],
    expected: dict[str, dict[str, torch.Tensor]],
    source: str = "the file",
) -> Conversion:
    """Place every reference tensor into ``expected`` (clipsr part -> state dict of the target
    models, for names, shapes and dtypes; ``clip`` holds only the keys the reference must
    supply). Raises :class:`ReferenceFormatError` naming the keys missing or mis-shaped."""
    weights: dict[str, dict[str, torch.Tensor]] = {t: {} for t in expected}
    sources: dict[str, dict[str, str]] = {t: {} for t in expected}
    dropped: dict[str, list[str]] = {}
    unplaced, misshaped, seen = [], [], set()
    for part in PARTS:
        for key, tensor in reference.get(part, {}).items():
            name = f"{part}.{key}"
            module = dropped_module(part, key)
            if module is not None:
                dropped.setdefault(module, []).append(name)
                continue
            placed = clipsr_name(part, key)
            target = expected.get(placed[0], {}).get(placed[1]) if placed else None
            if target is None:
                unplaced.append(name)
                continue
            if tuple(tensor.shape) != tuple(target.shape):
                seen.add(placed)
                misshaped.append(
                    f"{name} is {list(tensor.shape)}, {placed[0]} {placed[1]} needs "
                    f"{list(target.shape)}"
                )
                continue
            weights[placed[0]][placed[1]] = tensor.detach().to(target.dtype).contiguous()
            sources[placed[0]][placed[1]] = name
    missing = [
        reference_name(t, k) or f"(no reference name for {t} {k})"
        for t, state in expected.items()
        for k in state
        if k not in weights[t] and (t, k) not in seen
    ]
    if missing or misshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} key(s) missing ({_first(missing, 3, ', ')})")
        if misshaped:
            problems.append(f"{len(misshaped)} of the wrong shape ({_first(misshaped, 2, '; ')})")
        raise ReferenceFormatError(
            f"{source}: {' and '.join(problems)}; is it a CLIP-SR checkpoint of the configuration "
            "being converted to (the base widths, ViT-B/32)?"
        )
    counts = {p: len(reference.get(p, {})) for p in PARTS}
    return Conversion(weights, sources, dropped, unplaced, counts)


def _first(items: list[str], n: int, sep: str) -> str:
    return sep.join(items[:n]) + (f"{sep}..." if len(items) > n else "")


def dropped_summary(dropped: dict[str, list[str]]) -> list[str]:
    """``"netG fc_code.* (2 keys)"`` lines, in the order of :data:`DROPPED`."""
    return [
        f"{part} {module}.* ({len(dropped[module])} keys)"
        for part, _, module in DROPPED
        if dropped.get(module)
    ]


# CLIP keys the reference file does not hold (its mapper stops before ln_post and proj): they
# come, with the text tower, from the CLIP weights configured in model.clip.
CLIP_VISUAL_NOT_IN_REFERENCE = ("visual.ln_post.weight", "visual.ln_post.bias", "visual.proj")


def reference_clip_keys(clip_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of an open_clip state dict that the reference's ``mapping.CLIP_ViT`` holds."""
    return {
        k: v
        for k, v in clip_state.items()
        if k.startswith("visual.") and k not in CLIP_VISUAL_NOT_IN_REFERENCE
    }


def reference_config(scale: int = 4, overrides: list[str] = ()) -> CLIPSRConfig:
    """The clipsr config of the reference's model: the base widths, ViT-B/32 with OpenAI
    weights (QuickGELU), the ``release`` wiring, the reference's CLIP input quirks (the double
    [0, 1] shift, nearest resize to 224) and, at 8x/16x, nearest pre-upsampling of the LR to
    64 px (the reference network always runs 64 -> 256 px). ``overrides`` (``a.b=value``) win;
    one that sets ``model.clip.checkpoint`` replaces the ``openai`` tag."""
    if scale not in (4, 8, 16):
        raise ConfigError(f"scale: the reference runs 4x, 8x or 16x, not {scale}")
    clip = {"arch": "ViT-B-32", "pretrained": "openai", "quick_gelu": True}
    if any(o.split("=", 1)[0].strip() == "model.clip.checkpoint" for o in overrides):
        clip["pretrained"] = ""
    clip |= {"compat_double_shift": True, "image_resize": "nearest"}
    data = {
        "model": {
            "scale": scale,
            "hr_size": 256,
            "clip": clip,
            "generator": {"wiring": "release", "lr_pre_upsample": scale // 4},
        }
    }
    return from_dict(CLIPSRConfig, data, list(overrides))
