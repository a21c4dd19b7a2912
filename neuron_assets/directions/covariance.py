"""The covariance of a layer's activations, accumulated in one recording pass, and Σ^{-1/2}.

``CovarianceAccumulator`` is fed batch by batch (the recording pass's batches of the layer's
full activation vectors) and keeps three running sums in float64: the token count, the sum of
the activations and the sum of their outer products, all shifted by the first batch's mean so
that a large common offset does not cancel catastrophically in ``Σ = (S₂ - n μμᵀ) / (n - 1)``.
Its memory is the d×d outer-product sum: 8·d² bytes (d = d_mlp), 18.9 MB at d = 1,536,
75.5 MB at 3,072 (GPT-2 small) and 327.7 MB at 6,400 (GPT-2 XL), plus 16·d bytes of vectors.

``add`` briefly holds one more d×d product and two float64 copies of the batch (measured at
d = 1,536, 512 tokens: 31.5 MB above the 18.9 MB held; at 6,400: 327.7 MB plus 0.1 MB per token).
``inverse_sqrt`` takes Σ to Σ^{-1/2} by a symmetric eigendecomposition; its peak is about four
d×d float64 arrays (Σ, the eigenvectors, the scaled copy, the product; measured 75.6 MB at
1,536), so about 1.31 GB at 6,400, freed on return except the 327.7 MB result.

Regularization: eigenvalues are floored at ``eps`` × the largest (default eps = 1e-6) before
the inverse square root. MLP layers have directions of (almost) no variance: dead neurons give
exact zero eigenvalues, and rounding gives tiny or slightly negative ones. Unfloored, those
directions would be amplified without bound and a virtual neuron pointing at them would be
rounding noise; floored, no direction is amplified more than 1/sqrt(eps) = 1,000 times the
largest one's scale. Directions above the floor are whitened exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_EPS = 1e-6


class CovarianceAccumulator:
    """Running float64 sums (count, sum, sum of outer products) of a layer's activation vectors.

    ``add`` takes a batch (tokens × width, numpy or torch, any float dtype; leading batch
    dimensions are flattened); ``covariance`` and ``mean`` read the result at any time.
    A batch of the wrong width or with non-finite values is a ValueError and adds nothing.
    """

    def __init__(self, width: int) -> None:
        if width < 1:
            raise ValueError(f"the layer width must be at least 1, got {width}")
        self.width = width
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(width, dtype=np.float64)
        self._outer = np.zeros((width, width), dtype=np.float64)

    @property
    def nbytes(self) -> int:
        """Bytes held by the running sums (8·width² + 16·width)."""
        shift = 0 if self._shift is None else self._shift.nbytes
        return self._sum.nbytes + self._outer.nbytes + shift

    def add(self, activations: np.ndarray | torch.Tensor) -> None:
        """Fold one batch of activation vectors (…, width) into the sums."""
        if isinstance(activations, torch.Tensor):
            activations = activations.detach().to("cpu", torch.float64).numpy()
        batch = np.asarray(activations, dtype=np.float64)
        if batch.ndim < 1 or batch.shape[-1] != self.width:
            raise ValueError(f"activations of shape {batch.shape} do not end in the layer width {self.width}")
        batch = batch.reshape(-1, self.width)
        if not np.isfinite(batch).all():
            raise ValueError(f"activations contain {int((~np.isfinite(batch)).sum())} non-finite value(s)")
        if len(batch) == 0:
            return
        if self._shift is None:
            self._shift = batch.mean(axis=0)
        centred = batch - self._shift
        self.count += len(batch)
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred

    def mean(self) -> np.ndarray:
        """The mean activation vector; a ValueError before any token was added."""
        if self.count == 0 or self._shift is None:
            raise ValueError("no activations were added: the mean is undefined")
        return self._shift + self._sum / self.count

    def covariance(self) -> np.ndarray:
        """The sample covariance (n - 1 in the denominator, as ``np.cov``), width × width float64.

        Fewer than 2 tokens is a ValueError (no covariance exists).
        """
        if self.count < 2:
            raise ValueError(f"{self.count} token(s) added: a covariance needs at least 2")
        centred_mean = self._sum / self.count
        cov = (self._outer - self.count * np.outer(centred_mean, centred_mean)) / (self.count - 1)
        return (cov + cov.T) / 2


@dataclass(frozen=True)
class Whitening:
    """Σ^{-1/2} (symmetric) and how it was regularized."""

    matrix: np.ndarray
    eps: float
    n_floored: int
    largest_eigenvalue: float


def inverse_sqrt(covariance: np.ndarray, n_tokens: int | None = None, eps: float = DEFAULT_EPS) -> Whitening:
    """Σ^{-1/2} = V diag(max(λ, eps·λ_max))^{-1/2} Vᵀ from the eigendecomposition Σ = V diag(λ) Vᵀ.

    ValueError, naming the problem, for: a non-square or non-symmetric matrix, non-finite
    entries, a covariance with no variance at all (λ_max ≤ 0), eps outside (0, 1), and, when
    ``n_tokens`` is given, fewer than width + 1 tokens (the sample covariance is then singular
    by construction: record more tokens rather than let the floor hide it). Isolated zero
    eigenvalues (dead neurons) are floored, not errors; ``n_floored`` counts them.
    """
    cov = np.asarray(covariance, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"a covariance must be a square matrix, got shape {cov.shape}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    if not np.isfinite(cov).all():
        raise ValueError(f"the covariance has {int((~np.isfinite(cov)).sum())} non-finite entries")
    if not np.allclose(cov, cov.T, rtol=1e-8, atol=1e-12 * max(1.0, float(np.abs(cov).max()))):
        raise ValueError("the covariance is not symmetric")
    width = cov.shape[0]
    if n_tokens is not None and n_tokens < width + 1:
        raise ValueError(
            f"the covariance of {n_tokens} token(s) in width {width} is singular "
            f"(rank at most {max(n_tokens - 1, 0)}): record at least {width + 1} tokens"
        )
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    largest = float(eigenvalues[-1])
    if not largest > 0.0:
        raise ValueError("the covariance is singular: the activations have no variance in any direction")
    floor = eps * largest
    n_floored = int((eigenvalues < floor).sum())
    scale = 1.0 / np.sqrt(np.maximum(eigenvalues, floor))
    matrix = (eigenvectors * scale) @ eigenvectors.T
    return Whitening((matrix + matrix.T) / 2, eps, n_floored, largest)
