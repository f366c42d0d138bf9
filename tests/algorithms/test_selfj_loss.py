import math

import pytest
import torch

from selfimprove.algorithms.selfj_loss import distill_kl, selfj_loss


def test_kl_worked_number_per_position():
    t = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    s = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))
    assert distill_kl(t, s).item() == pytest.approx(0.085123, abs=1e-6)


def test_no_gradient_reaches_the_teacher_view():
    t = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).requires_grad_(True)
    s = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).requires_grad_(True)
    distill_kl(t, s).backward()
    assert t.grad is None or torch.count_nonzero(t.grad) == 0
    assert torch.count_nonzero(s.grad) > 0


def test_total_loss_combines_the_three_terms():
    t = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    s = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    loss, parts = selfj_loss(t, s, torch.tensor([0]))
    expected = -math.log(0.7) + 0.3 * -math.log(0.5) + 2 * 0.085123
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert parts["kl"] == pytest.approx(0.085123, abs=1e-6)
