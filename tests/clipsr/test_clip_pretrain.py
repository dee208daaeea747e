"""Domain CLIP training: open_clip's loss where captions differ, and a CLIP that learns the set."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipsr.adherence import ShapeAttributes
from clipsr.clip_backbone import ClipBackbone
from clipsr.clip_pretrain import (
    ClipInput,
    clamp_logit_scale,
    clip_loss_step,
    contrastive_loss,
    degrade,
    retrieval_recall,
    zero_shot_accuracy,
)
from clipsr.config import ClipConfig
from pipelines.generated_shapes import attributes, generated_shapes


def test_equal_captions_need_no_special_targets():
    # equal captions give equal text features; then open_clip's loss and its gradients equal
    # those of soft targets that spread each row's mass over the equal captions
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1).requires_grad_()
    base = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1).requires_grad_()
    txt = base[[0, 0, 1, 2, 2, 3]]  # what a text encoder gives for equal captions
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    scale = torch.tensor(10.0)
    plain = contrastive_loss()(img, txt, scale)
    match = (ids[:, None] == ids[None, :]).float()
    soft = match / match.sum(1, keepdim=True)
    logits = scale * img @ txt.T
    ours = (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft)) / 2
    assert torch.allclose(plain, ours, atol=1e-6)
    g_plain = torch.autograd.grad(plain, (img, base), retain_graph=True)
    g_ours = torch.autograd.grad(ours, (img, base))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_plain, g_ours))


def test_degrade_blurs_the_chosen_share_only():
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    out = degrade(x, torch.Generator().manual_seed(0), prob=0.5)
    changed = [(out[i] - x[i]).abs().max() > 1e-6 for i in range(16)]
    assert 3 <= sum(changed) <= 13
    again = degrade(x, torch.Generator().manual_seed(0), prob=0.5)
    assert torch.equal(out, again)


@pytest.mark.timeout(300)
def test_tiny_clip_learns_shapes_and_colours_of_the_set():
    torch.manual_seed(0)
    model = open_clip.create_model("clipsr-tiny", pretrained=None)
    tokenizer = open_clip.get_tokenizer("clipsr-tiny")
    clip_input = ClipInput.of(model)
    attrs = ShapeAttributes.from_dict(attributes())
    train = generated_shapes(512, seed=0)
    test = generated_shapes(64, seed=1)

    def tensor(items):
        arr = np.stack([i.image for i in items])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1

    x_train, x_test = tensor(train), tensor(test)
    truth = [attrs.parse(i.caption) for i in test]
    before = zero_shot_accuracy(model, tokenizer, clip_input, attrs, x_test, truth)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98))
    loss_fn, g = contrastive_loss(), torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(train), (64,), generator=g)
        loss = clip_loss_step(
            model, tokenizer, clip_input, loss_fn, x_train[idx], [train[i].caption for i in idx]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        clamp_logit_scale(model)
    after = zero_shot_accuracy(model, tokenizer, clip_input, attrs, x_test, truth)
    assert before["shape"] < 0.5 and after["shape"] > 0.9 and after["colour"] > 0.9, (before, after)
    recall = retrieval_recall(model, tokenizer, clip_input, x_test, [i.caption for i in test])
    assert recall["image_to_text_r5"] > 0.5

    # the file loads as model.clip.checkpoint
    path = f"{pytest.importorskip('tempfile').mkdtemp()}/clip.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    backbone = ClipBackbone(ClipConfig(arch="clipsr-tiny", checkpoint=path, image_taps=[1, 2, 3]))
    emb = backbone.encode_text([test[0].caption])
    assert torch.allclose(emb, model.encode_text(tokenizer([test[0].caption])), atol=1e-5)
