"""Attentive correlation pooling (ACP, after Kakouros et al.): an utterance classifier over a variable-length
sequence of segment vectors that pools the *correlations between channels*, weighted by learned attention.

Per utterance with segment vectors x_1..x_n (standardised with the training vectors' mean/std):
h_i = W x_i (`dim` channels); attention a = softmax_i(v^T tanh(U h_i)); weighted mean m = sum a_i h_i and
covariance C = sum a_i (h_i - m)(h_i - m)^T, normalised to the correlation matrix
R = C / sqrt(diag(C) diag(C)^T); the strict upper triangle of R (plus m with `with_mean`) feeds a linear
classifier trained with cross-entropy and label smoothing `epsilon`. An utterance of one segment has no
correlations (zeros).

scikit-learn style: `ACP(...).fit(X_list, y)` returns self; `predict_proba(X_list)`; `attention(X_list)` the
learned weights per utterance. Defaults are `dsl.config.StageSpec`'s. Seeded and deterministic on one machine (its own RNG streams; the caller's
global torch RNG is left alone); `num_threads` > 0 sets torch's threads while it fits or predicts.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsl.config import StageSpec

_VAR_EPS = 1e-5  # added to the channel variances before the correlation normalisation


class ACPNet(nn.Module):
    """Projection, attention scorer, correlation pooling and the linear classifier."""

    def __init__(self, in_dim: int, dim: int, n_classes: int, with_mean: bool, scorer_hidden: int = 16):
        super().__init__()
        self.dim, self.with_mean = dim, with_mean
        self.proj = nn.Linear(in_dim, dim)
        self.scorer = nn.Sequential(nn.Linear(dim, scorer_hidden), nn.Tanh(), nn.Linear(scorer_hidden, 1))
        self.register_buffer("triu", torch.triu_indices(dim, dim, offset=1), persistent=False)
        self.head = nn.Linear(self.triu.shape[1] + (dim if with_mean else 0), n_classes)

    def weights(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected segments h (B, L, dim) and attention a (B, L), zero on padding (`mask` False)."""
        h_real = self.proj(x[mask])  # the real segments only: no work on padding
        h = x.new_zeros(*mask.shape, self.dim).masked_scatter(mask.unsqueeze(-1), h_real)
        logits = x.new_full(mask.shape, float("-inf")).masked_scatter(mask, self.scorer(h_real).squeeze(-1))
        return h, torch.softmax(logits, dim=1)

    def pooled(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, a = self.weights(x, mask)
        m = torch.bmm(a.unsqueeze(1), h).squeeze(1)
        c = h - m.unsqueeze(1)
        cov = torch.bmm((c * a.unsqueeze(2)).transpose(1, 2), c)
        sd = torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2) + _VAR_EPS)
        corr = cov / (sd.unsqueeze(2) * sd.unsqueeze(1))
        feats = corr[:, self.triu[0], self.triu[1]]
        return torch.cat([feats, m], dim=1) if self.with_mean else feats

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x, mask))


def _padded(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) zero-padded batch and its (B, L) mask of real segments."""
    x = nn.utils.rnn.pad_sequence(list(seqs), batch_first=True)
    lengths = torch.tensor([len(s) for s in seqs])
    return x, torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n > 0:
            torch.set_num_threads(before)


@dataclass
class ACP:
    """The ACP classifier (see the module docstring); `n_classes` fixes the probability columns."""

    n_classes: int
    dim: int = StageSpec.dim
    epsilon: float = StageSpec.epsilon
    with_mean: bool = StageSpec.with_mean
    epochs: int = StageSpec.epochs
    lr: float = StageSpec.lr
    batch_size: int = StageSpec.batch_size
    weight_decay: float = StageSpec.weight_decay
    seed: int = 0
    num_threads: int = 0
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        self.net: ACPNet | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def _check_input(self, X: Sequence[np.ndarray]) -> None:
        if not len(X):
            raise ValueError("ACP: no utterances given")
        bad = [i for i, s in enumerate(X) if np.ndim(s) != 2 or len(s) == 0]
        if bad:
            raise ValueError(f"ACP: utterance(s) {bad[:5]} are not non-empty (segments, features) arrays")
        if self.mean is not None and any(np.shape(s)[1] != len(self.mean) for s in X):
            raise ValueError(f"ACP: fitted on {len(self.mean)} features per segment, got "
                             f"{sorted({np.shape(s)[1] for s in X})}")

    def _tensors(self, X: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Each utterance standardised with the training vectors' mean/std, as a float32 tensor."""
        return [torch.from_numpy((np.asarray(s, dtype=np.float32) - self.mean) / self.std) for s in X]

    def init_net(self, in_dim: int) -> ACPNet:
        """A freshly initialised network from this ACP's seed (the caller's torch RNG is untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return ACPNet(in_dim, self.dim, self.n_classes, self.with_mean)

    def fit(self, X: Sequence[np.ndarray], y: np.ndarray) -> ACP:
        """Fit on utterances `X` (each (segments, D)) with labels `y` in [0, n_classes). Returns self."""
        y = np.asarray(y, dtype=np.int64)
        if len(X) != len(y):
            raise ValueError(f"ACP.fit: {len(X)} utterances but {len(y)} labels")
        self.mean = None
        self._check_input(X)
        stacked = np.concatenate([np.asarray(s, dtype=np.float32) for s in X])
        self.mean = stacked.mean(axis=0)
        self.std = np.maximum(stacked.std(axis=0), 1e-6).astype(np.float32)
        with _threads(self.num_threads):
            net = self.init_net(stacked.shape[1])
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            gen = torch.Generator().manual_seed(self.seed + 1)
            targets = torch.from_numpy(y)
            seqs = self._tensors(X)
            net.train()
            for _ in range(self.epochs):
                perm = torch.randperm(len(X), generator=gen).numpy()
                for i in range(0, len(X), self.batch_size):
                    idx = perm[i:i + self.batch_size]
                    x, mask = _padded([seqs[j] for j in idx])
                    loss = F.cross_entropy(net(x, mask), targets[idx], label_smoothing=self.epsilon)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        self.net = net.eval()
        return self

    def _check_fitted(self) -> ACPNet:
        if self.net is None:
            raise RuntimeError("ACP is not fitted: call fit(X, y) first")
        return self.net

    @torch.no_grad()
    def predict_proba(self, X: Sequence[np.ndarray]) -> np.ndarray:
        """(n_utterances, n_classes) class probabilities."""
        net = self._check_fitted()
        self._check_input(X)
        out, seqs = [], self._tensors(X)
        with _threads(self.num_threads):
            for i in range(0, len(X), self.eval_batch_size):
                x, mask = _padded(seqs[i:i + self.eval_batch_size])
                out.append(torch.softmax(net(x, mask), dim=1))
        return torch.cat(out).numpy().astype(np.float32)

    def predict(self, X: Sequence[np.ndarray]) -> np.ndarray:
        return np.argmax(self.predict_proba(X), axis=1)

    @torch.no_grad()
    def attention(self, X: Sequence[np.ndarray], net: ACPNet | None = None) -> list[np.ndarray]:
        """Per utterance, its segments' attention weights (they sum to 1); `net`: another network's
        (e.g. `init_net(D)`, the weights before training)."""
        net = net or self._check_fitted()
        self._check_input(X)
        x, mask = _padded(self._tensors(X))
        _, a = net.weights(x, mask)
        return [a[i, :len(s)].numpy().copy() for i, s in enumerate(X)]
