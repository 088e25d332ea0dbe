import torch
from types import SimpleNamespace

from afcore.ldm import sample_latent_shift, equivariance_loss


class PointwiseNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x, t):
        return SimpleNamespace(sample=self.conv(x))


def test_shift_sampler_grid_and_range():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        dy, dx = sample_latent_shift((8, 16), g)
        assert abs(dy) <= 3 and abs(dx) <= 6
        assert (dy * 8) == int(dy * 8) and (dx * 8) == int(dx * 8)


def test_loss_zero_for_equivariant_net_and_mask():
    net = PointwiseNet()
    x = torch.randn(2, 4, 8, 8)
    loss, mask = equivariance_loss(net, x, torch.tensor([3, 3]), (1.5, -2.0))
    assert loss.item() < 1e-10
    assert mask[:1].sum() == 0 and mask[:, -2:].sum() == 0 and mask[2:, :6].all()
    loss.backward()  # differentiable
