"""PyTorch reference of our BYOL / SimSiam train step, for benchmarks only.

The same network (torchvision's ResNet-18 / ResNet-50 blocks, at our
widths, with our stems), heads (byol_jax.networks.HEAD_PRESETS), online linear probe on
detached features, loss, optimizer (LARS with biases / BatchNorm excluded
from decay and adaptation, as optax.lars with our masks; SimSiam: SGD with
momentum, coupled weight decay, fixed-LR predictor) and EMA target update.
Both views go through the networks separately (per-view BatchNorm
statistics), as in byol_jax.train_step. torch is never a dependency of
byol_jax: this file runs in the benchmark venv (`make bench-step`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

BN_MOMENTUM = 0.1  # PyTorch convention: 1 - our 0.9 decay.


class _ResNet(torchvision.models.resnet.ResNet):
  """torchvision's ResNet with `base` channels in the first stage instead of
  64 (and `in_channels` inputs): its own blocks, _make_layer and forward."""

  def __init__(self, block, layers, base, in_channels):
    nn.Module.__init__(self)  # pylint: disable=non-parent-init-called
    self._norm_layer, self.dilation, self.groups = nn.BatchNorm2d, 1, 1
    self.base_width, self.inplanes = 64, base
    self.conv1 = nn.Conv2d(in_channels, base, 7, 2, 3, bias=False)
    self.bn1, self.relu = nn.BatchNorm2d(base), nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(block, base, layers[0])
    self.layer2 = self._make_layer(block, 2 * base, layers[1], stride=2)
    self.layer3 = self._make_layer(block, 4 * base, layers[2], stride=2)
    self.layer4 = self._make_layer(block, 8 * base, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(8 * base * block.expansion, 10)


def encoder(depth: int, stem: str, width: float = 1.0,
            in_channels: int = 3) -> tuple[nn.Module, int]:
  """torchvision's ResNet-18/50 at `width` with our stems: 'imagenet',
  'small' (3x3/1 conv, no pool) or 'small_pool' (3x3/1 conv, 3x3/2 pool)."""
  resnet = torchvision.models.resnet
  block, layers = {18: (resnet.BasicBlock, [2, 2, 2, 2]),
                   50: (resnet.Bottleneck, [3, 4, 6, 3])}[depth]
  base = int(64 * width)
  net = _ResNet(block, layers, base, in_channels)
  if stem in ('small', 'small_pool'):
    net.conv1 = nn.Conv2d(in_channels, base, 3, 1, 1, bias=False)
  if stem == 'small':
    net.maxpool = nn.Identity()
  for m in net.modules():  # torchvision's initialisation.
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
  dim = net.fc.in_features
  net.fc = nn.Identity()
  return net, dim


def mlp(d_in, hidden, out, hidden_bias, out_bias, out_bn):
  layers = []
  for h in hidden:
    layers += [nn.Linear(d_in, h, bias=hidden_bias), nn.BatchNorm1d(h),
               nn.ReLU(inplace=True)]
    d_in = h
  layers.append(nn.Linear(d_in, out, bias=out_bias))
  if out_bn:
    layers.append(nn.BatchNorm1d(out, affine=False))
  return nn.Sequential(*layers)


class Online(nn.Module):

  def __init__(self, depth, stem, head, proj_hidden, pred_hidden, out,
               num_classes=10, width=1.0, in_channels=3):
    super().__init__()
    self.encoder, dim = encoder(depth, stem, width, in_channels)
    byol = head == 'byol'
    self.projector = mlp(dim, proj_hidden, out, byol, byol, not byol)
    self.predictor = mlp(out, pred_hidden, out, byol, True, False)
    self.probe = nn.Linear(dim, num_classes)

  def forward(self, x):
    emb = self.encoder(x)
    z = self.projector(emb)
    return z, self.predictor(z), self.probe(emb.detach())


class LARS(torch.optim.Optimizer):
  """optax.lars as byol_jax configures it: g += wd * p and g *= trust *
  ||p|| / ||g|| for weights only (not biases / BatchNorm), then momentum."""

  def __init__(self, params, lr, weight_decay, momentum=0.9,
               trust_coefficient=1e-3):
    super().__init__(params, dict(lr=lr, weight_decay=weight_decay,
                                  momentum=momentum,
                                  trust_coefficient=trust_coefficient))

  @torch.no_grad()
  def step(self):
    for group in self.param_groups:
      for p in group['params']:
        if p.grad is None:
          continue
        g = p.grad
        if p.ndim > 1:  # Weights: decay and trust ratio (ours: masks).
          g = g.add(p, alpha=group['weight_decay'])
          pn, gn = torch.linalg.norm(p), torch.linalg.norm(g)
          trust = torch.where((pn > 0) & (gn > 0),
                              group['trust_coefficient'] * pn / gn,
                              torch.ones_like(pn))
          g = g * trust
        state = self.state[p]
        buf = state.get('momentum')
        update = g * group['lr']
        if buf is None:
          buf = state['momentum'] = update.clone()
        else:
          buf.mul_(group['momentum']).add_(update)
        p.sub_(buf)


class Step:
  """One training step of BYOL ('byol') or SimSiam ('simsiam')."""

  def __init__(self, method, depth, stem, proj_hidden, pred_hidden, out,
               lr=0.2, weight_decay=1.5e-6, tau=0.99, width=1.0,
               in_channels=3):
    head = 'byol' if method == 'byol' else 'simsiam'
    self.method, self.tau = method, tau
    self.online = Online(depth, stem, head, proj_hidden, pred_hidden, out,
                         width=width, in_channels=in_channels)
    for m in self.online.modules():
      if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        m.momentum, m.eps = BN_MOMENTUM, 1e-5
    probe = list(self.online.probe.parameters())
    if method == 'byol':
      self.target = copy.deepcopy(self.online)
      for p in self.target.parameters():
        p.requires_grad_(False)
      net = [p for n, p in self.online.named_parameters()
             if not n.startswith('probe')]
      self.opt = LARS(net, lr, weight_decay)
    else:
      self.target = None
      pred = list(self.online.predictor.parameters())
      rest = [p for n, p in self.online.named_parameters()
              if not n.startswith(('probe', 'predictor'))]
      self.opt = torch.optim.SGD([{'params': rest}, {'params': pred}],
                                 lr=lr, momentum=0.9,
                                 weight_decay=weight_decay)
    self.probe_opt = torch.optim.SGD(probe, lr=0.1, momentum=0.9,
                                     nesterov=True)

  def __call__(self, view1, view2, labels):
    z1, p1, l1 = self.online(view1)
    z2, p2, l2 = self.online(view2)
    if self.target is not None:
      with torch.no_grad():
        t1, _, _ = self.target(view1)
        t2, _, _ = self.target(view2)
      loss = (_byol(p1, t2) + _byol(p2, t1)).mean()
    else:
      loss = -(F.cosine_similarity(p1, z2.detach()).mean()
               + F.cosine_similarity(p2, z1.detach()).mean()) / 2
    probe = (F.cross_entropy(l1, labels) + F.cross_entropy(l2, labels)) / 2
    self.opt.zero_grad(set_to_none=True)
    self.probe_opt.zero_grad(set_to_none=True)
    (loss + probe).backward()
    self.opt.step()
    self.probe_opt.step()
    if self.target is not None:
      with torch.no_grad():  # xi <- tau xi + (1 - tau) theta.
        online = list(self.online.parameters())
        target = list(self.target.parameters())
        torch._foreach_mul_(target, self.tau)  # pylint: disable=protected-access
        torch._foreach_add_(target, online, alpha=1 - self.tau)  # pylint: disable=protected-access
    return loss.detach()


def _byol(p, z):
  return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)
