import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import vgg16

from clipsr.config import LossConfig
from clipsr.losses import VGGPerceptualLoss, build_perceptual_loss, clip_text_similarity


def test_vgg_loss_from_a_weights_file_matches_torchvision(tmp_path):
    torch.manual_seed(0)
    ref = vgg16(weights=None)
    state = ref.state_dict()
    torch.save(state, tmp_path / "vgg16.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vgg16.safetensors"))
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    expected = torch.nn.functional.mse_loss(ref.features[:31](x), ref.features[:31](y))
    for name in ("vgg16.pth", "vgg16.safetensors"):
        loss = VGGPerceptualLoss(str(tmp_path / name))
        assert torch.allclose(loss(x, y), expected)
        assert loss(x, x).item() == 0
        assert all(not p.requires_grad for p in loss.parameters())
    # through pool5: the last layer kept is the fifth max-pool
    assert isinstance(loss.features[-1], torch.nn.MaxPool2d) and len(loss.features) == 31


def test_perceptual_choice_is_explicit(tmp_path):
    assert build_perceptual_loss(LossConfig(perceptual="none")) is None
    with pytest.raises(ValueError, match="loss.vgg16_weights"):
        build_perceptual_loss(LossConfig(perceptual="vgg16", vgg16_weights=""))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_perceptual_loss(LossConfig(vgg16_weights=str(tmp_path / "missing.pth")))
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="is not a torchvision VGG16 state dict"):
        build_perceptual_loss(LossConfig(vgg16_weights=str(tmp_path / "wrong.pth")))


def test_clip_similarity_is_mean_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert clip_text_similarity(a, b).item() == pytest.approx(0.5)
