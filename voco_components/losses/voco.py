"""VoCo losses: the paper's Eq. 1-7 and the public author code's variant, vectorised over B, k and n."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "position_logits",
    "prediction_loss",
    "regularization_loss",
    "VoCoLoss",
    "symmetric_relu_logits",
    "split_prediction_loss",
    "squared_relu_regularization_loss",
    "OfficialVoCoLoss",
]

NORM_EPS = 1e-8
LOG_EPS = 1e-6


def _check_features(name: str, feats: torch.Tensor) -> None:
    if feats.ndim != 3:
        raise ValueError(f"{name} must have shape (B, crops, C), got {tuple(feats.shape)}.")


def _pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, k, C), (B, n, C) -> (B, k, n) cosine similarities; a zero vector has cosine 0 with everything."""
    a = F.normalize(a, dim=-1, eps=NORM_EPS)
    b = F.normalize(b, dim=-1, eps=NORM_EPS)
    return (a @ b.transpose(-1, -2)).clamp(-1.0, 1.0)


def _upper_pairs(similarity: torch.Tensor) -> torch.Tensor:
    """(B, n, n) -> (B, n(n-1)/2): the entries i < j."""
    n = similarity.shape[-1]
    if n < 2:
        raise ValueError(f"the regulariser needs at least 2 base crops, got {n}.")
    rows, cols = torch.triu_indices(n, n, offset=1, device=similarity.device)
    return similarity[:, rows, cols]


def position_logits(random_feats: torch.Tensor, base_feats: torch.Tensor) -> torch.Tensor:
    """Eq. 1: l_i = CosSim(p, q_i) for every random crop p and base crop q_i of the same volume.

    Args:
        random_feats: (B, k, C) projected features of the k random crops of each volume.
        base_feats: (B, n, C) projected features of the n base crops of each volume.

    Returns:
        (B, k, n) cosine similarities in [-1, 1]. No stop-gradient here: :class:`VoCoLoss` detaches the bases.
    """
    _check_features("random_feats", random_feats)
    _check_features("base_feats", base_feats)
    if random_feats.shape[0] != base_feats.shape[0] or random_feats.shape[-1] != base_feats.shape[-1]:
        raise ValueError(
            f"random_feats {tuple(random_feats.shape)} and base_feats {tuple(base_feats.shape)} must share B and C."
        )
    return _pairwise_cosine(random_feats, base_feats)


def prediction_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = LOG_EPS) -> torch.Tensor:
    """Eq. 2-3: L_pred = -mean over B, k and all n bases of log(1 - |y - l|).

    Every base counts, overlapping or not, as Eq. 3 averages uniformly over n. A negative cosine is
    not clipped: d = |y - l| penalises it like a positive one of the same size, so a random crop is
    pulled towards l = y from either side. ``1 - d`` is clamped to at least ``eps`` before the log,
    so each term is at most -log(eps) (13.8 for 1e-6) and never inf or NaN; an entry with
    d >= 1 - eps (a cosine pointing away from a large label) then adds that bound and no gradient.

    Args:
        logits: (B, k, n) position logits (Eq. 1).
        labels: (B, k, n) position labels y in [0, 1].

    Returns:
        scalar tensor.
    """
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must have the same shape.")
    distance = (labels.to(logits.dtype) - logits).abs()
    return -torch.log((1.0 - distance).clamp_min(eps)).mean()


def regularization_loss(base_feats: torch.Tensor) -> torch.Tensor:
    """Eq. 4-5: L_reg = mean over the n(n-1)/2 unordered base pairs of |CosSim(q_i, q_j)|, averaged over B.

    Gradients flow into both bases of every pair.

    Args:
        base_feats: (B, n, C) projected features of the base crops.

    Returns:
        scalar tensor.
    """
    _check_features("base_feats", base_feats)
    return _upper_pairs(_pairwise_cosine(base_feats, base_feats)).abs().mean()


class VoCoLoss(nn.Module):
    """Eq. 7 of the paper: L = L_pred + lambda * L_reg.

    The bases are detached inside the prediction term (the note under Eq. 1), so L_pred trains the
    random-crop path only; L_reg trains the bases. After each call, ``terms`` holds the detached
    ``pred`` and ``reg`` values for logging.

    Args:
        lambda_reg: weight of the regulariser (1.0 in the paper).
        use_pred: include L_pred.
        use_reg: include L_reg.
    """

    def __init__(self, lambda_reg: float = 1.0, use_pred: bool = True, use_reg: bool = True) -> None:
        super().__init__()
        if not (use_pred or use_reg):
            raise ValueError("VoCoLoss needs at least one of use_pred and use_reg.")
        self.lambda_reg = lambda_reg
        self.use_pred = use_pred
        self.use_reg = use_reg
        self.terms: dict[str, torch.Tensor] = {}

    def forward(self, random_feats: torch.Tensor, base_feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """random_feats (B, k, C), base_feats (B, n, C), labels (B, k, n) -> scalar loss."""
        zero = random_feats.new_zeros(())
        pred = prediction_loss(position_logits(random_feats, base_feats.detach()), labels) if self.use_pred else zero
        reg = regularization_loss(base_feats) if self.use_reg else zero
        self.terms = {"pred": pred.detach(), "reg": reg.detach()}
        return pred + self.lambda_reg * reg


def symmetric_relu_logits(
    student_random: torch.Tensor,
    student_base: torch.Tensor,
    teacher_random: torch.Tensor,
    teacher_base: torch.Tensor,
) -> torch.Tensor:
    """Author-code logits: ½ [ReLU(cos(student random, teacher bases)) + ReLU(cos(teacher random, student bases))].

    The teacher features are detached. Shapes: random (B, k, C), base (B, n, C); returns (B, k, n) in [0, 1].
    """
    first = F.relu(position_logits(student_random, teacher_base.detach()))
    second = F.relu(position_logits(teacher_random.detach(), student_base))
    return 0.5 * (first + second)


def split_prediction_loss(
    logits: torch.Tensor, labels: torch.Tensor, eps: float = LOG_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Author-code prediction loss, split by overlap; each part is computed per volume and averaged over B.

    pos = Σ[-y log(1 - |y - l| + eps)] / (Σ y + eps) over the overlapping entries (label-weighted);
    neg = Σ[1{y = 0} l²] / (#{y = 0} + eps) over the non-overlapping entries.
    With l in [0, 1] (ReLU logits) the log argument stays at least eps.

    Args:
        logits: (B, k, n) logits in [0, 1].
        labels: (B, k, n) position labels.

    Returns:
        (pos, neg) scalar tensors.
    """
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must have the same shape.")
    labels = labels.to(logits.dtype)
    distance = (labels - logits).abs()
    pos = (-labels * torch.log((1.0 - distance + eps).clamp_min(eps))).sum(dim=(1, 2)) / (labels.sum(dim=(1, 2)) + eps)
    empty = (labels == 0).to(logits.dtype)
    neg = (empty * logits.square()).sum(dim=(1, 2)) / (empty.sum(dim=(1, 2)) + eps)
    return pos.mean(), neg.mean()


def squared_relu_regularization_loss(base_feats: torch.Tensor) -> torch.Tensor:
    """Author-code regulariser: mean over pairs i < j of ReLU(cos(q_i, sg(q_j)))², averaged over B.

    Only positive similarity costs; the second base of each pair is detached. base_feats (B, n, C) -> scalar.
    """
    _check_features("base_feats", base_feats)
    similarity = _pairwise_cosine(base_feats, base_feats.detach())
    return F.relu(_upper_pairs(similarity)).square().mean()


class OfficialVoCoLoss(nn.Module):
    """The loss of the public author code: pos + neg + reg on symmetric student/teacher logits.

    ``terms`` holds the detached ``pos``, ``neg`` and ``reg`` values after each call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.terms: dict[str, torch.Tensor] = {}

    def forward(
        self,
        student_random: torch.Tensor,
        student_base: torch.Tensor,
        teacher_random: torch.Tensor,
        teacher_base: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Random crops (B, k, C), bases (B, n, C) of student and teacher, labels (B, k, n) -> scalar."""
        logits = symmetric_relu_logits(student_random, student_base, teacher_random, teacher_base)
        pos, neg = split_prediction_loss(logits, labels)
        reg = squared_relu_regularization_loss(student_base)
        self.terms = {"pos": pos.detach(), "neg": neg.detach(), "reg": reg.detach()}
        return pos + neg + reg
