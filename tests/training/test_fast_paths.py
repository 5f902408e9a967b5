"""Issue 8: the fast paths give the plain path's results (on CPU: channels_last vs contiguous).

Compared on one training step's ingredients (PGD adversarial images, logits, loss and
every parameter gradient) rather than on weights after Adam: Adam's first steps move
each weight by about lr * sign(gradient), so float-order noise in a near-zero gradient
flips a sign and hides agreement everywhere else.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from robsal.attacks import pgd
from robsal.models import build_model

from .conftest import make_toy_data


def _step(channels_last: bool, x: torch.Tensor, y: torch.Tensor, classes: list[str]):
    torch.manual_seed(0)
    model = build_model("resnet18", classes, image_size=x.shape[-1])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    x_adv = pgd(model, x, y, eps=0.5, steps=3, generator=torch.Generator().manual_seed(1))
    logits = model(x)  # the update's ingredients on the same (clean) input for both layouts
    loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {k: p.grad.detach().contiguous() for k, p in model.named_parameters()}
    return x_adv.contiguous(), logits.detach(), loss.detach(), grads


def test_channels_last_step_equals_contiguous_step():
    data = make_toy_data(n_train=8, n_test=2, n_val=1, size=32)
    x, y = data.batch(data.indices("train")[:12])
    plain = _step(False, x, y, data.classes)
    fast = _step(True, x, y, data.classes)
    # adversarial images: PGD's normalised steps amplify float-order noise a little (eps = 0.5)
    assert float((fast[0] - plain[0]).abs().max()) < 2e-3
    assert float((fast[0] - plain[0]).abs().mean()) < 1e-5
    torch.testing.assert_close(fast[1], plain[1], rtol=1e-4, atol=1e-5)  # logits
    torch.testing.assert_close(fast[2], plain[2], rtol=1e-4, atol=1e-6)  # loss
    for k, g in plain[3].items():
        scale = float(g.abs().max()) + 1e-12
        assert float((fast[3][k] - g).abs().max()) <= 1e-3 * scale, k  # every gradient, relative to its size
    assert float(plain[2]) > 0 and any(float(g.abs().max()) > 0 for g in plain[3].values())
