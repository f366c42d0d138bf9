"""Self-J's self-distillation loss (Ye & Ng, arXiv 2409.00935; nusnlp/Self-J kd.py, Trainer.compute_loss).

Two views of one sample share the target (the score digit): the teacher sees the reference answer,
the student does not. L = CE_T + alpha CE_S + alpha_kd KL(p_T || p_S), with the teacher detached,
the KL over the full vocabulary at every target position, averaged over those positions
(F.kl_div(log p_S, p_T, reduction="batchmean") per position set). alpha 0.3 and alpha_kd 2 are the
code's hard-coded values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p_T || p_S); [N, V] logits at the N target positions; teacher detached."""
    p_t = torch.softmax(teacher_logits.detach().float(), dim=-1)
    log_s = torch.log_softmax(student_logits.float(), dim=-1)
    return F.kl_div(log_s, p_t, reduction="batchmean")


def selfj_loss(teacher_logits, student_logits, targets, alpha: float = 0.3, alpha_kd: float = 2.0):
    """L = CE_T + alpha CE_S + alpha_kd KL(p_T || p_S) over [N, V] logits at N target positions."""
    ce_t = F.cross_entropy(teacher_logits.float(), targets)
    ce_s = F.cross_entropy(student_logits.float(), targets)
    kl = distill_kl(teacher_logits, student_logits)
    return ce_t + alpha * ce_s + alpha_kd * kl, {"ce_teacher": ce_t.item(), "ce_student": ce_s.item(), "kl": kl.item()}
