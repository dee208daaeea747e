import torch

from clipsr.fusion import Affine, FusionResBlock, TextImageFusionBlock


def test_affine_is_identity_at_init():
    affine = Affine(cond_dim=16, channels=8)
    x = torch.randn(3, 8, 5, 5)
    for text in (torch.randn(3, 16), torch.zeros(3, 16), 100 * torch.randn(3, 16)):
        assert torch.equal(affine(x, text), x)


def test_fusion_block_ignores_text_at_init_with_and_without_softmax():
    for softmax in (False, True):
        block = TextImageFusionBlock(8, 4, cond_dim=16, text_softmax=softmax)
        x = torch.randn(2, 8, 6, 6)
        a = block(x, torch.randn(2, 16))
        b = block(x, torch.randn(2, 16))
        assert torch.equal(a, b)
        lrelu = torch.nn.functional.leaky_relu
        assert torch.allclose(a, block.conv(lrelu(lrelu(x, 0.2), 0.2)), atol=1e-6)


def test_trained_affine_modulates_channelwise_by_text():
    affine = Affine(cond_dim=4, channels=3)
    with torch.no_grad():
        for p in affine.parameters():
            p.normal_()
    x = torch.ones(2, 3, 4, 4)
    out = affine(x, torch.randn(2, 4))
    # channel-wise: constant over H and W, different between the two captions
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))
    assert not torch.allclose(out[0], out[1])


def test_softmax_option_feeds_softmax_of_text():
    block = TextImageFusionBlock(4, 4, cond_dim=5, text_softmax=True)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
    x = torch.randn(1, 4, 3, 3)
    text = torch.randn(1, 5)
    # softmax is shift-invariant: adding a constant to the text changes nothing
    assert torch.allclose(block(x, text), block(x, text + 3.0), atol=1e-5)
    block.text_softmax = False
    assert not torch.allclose(block(x, text), block(x, text + 3.0), atol=1e-3)


def test_fusion_res_block_resizes_and_changes_channels():
    block = FusionResBlock(8, 4, cond_dim=16)
    out = block(torch.randn(2, 8, 4, 4), torch.randn(2, 16), size=(8, 8))
    assert out.shape == (2, 4, 8, 8)
    same = FusionResBlock(8, 8, cond_dim=16, mid_ch=2)
    assert isinstance(same.shortcut, torch.nn.Identity)
    assert same.fuse1.conv.out_channels == 2
