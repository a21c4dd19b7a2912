"""Virtual neurons a_θ = aᵀ Σ^{-1/2} θ and the coordinate ascent on θ (method.md §9).

Directions are the rows of a k × d matrix Θ of unit vectors. ``direction_projection`` folds
Σ^{-1/2} and Θ into one d × k matrix P = Σ^{-1/2} Θᵀ, so one recording pass gives every
direction's virtual neuron at once: ``virtual_neurons(batch, P)`` is batch @ P (tokens × k),
never one pass per direction. P costs 8·d·k bytes (6,400 × 64 directions: 3.3 MB).

The ascent alternates, for all directions together:

1. explanation step: ``explain(Θ)`` records the virtual neurons, explains each one with any
   method and simulates it on that direction's scoring tokens (an ``Explained``); an earlier
   round's explanation is kept instead where, re-simulated by ``resimulate`` on the new
   scoring tokens, it scores higher on the new θ;
2. update step: with that simulation fixed, ``ascend`` takes Adam steps (lr 1e-2, betas
   0.9/0.999) on θ of the Pearson correlation between the simulation and a_θ over the scoring
   tokens, renormalizing θ to unit norm after every step.

The virtual neuron is not centred: the mean's contribution μᵀΣ^{-1/2}θ is one constant per
direction, which correlation, top-k order and the lookup table's ranking all ignore. A
direction and its negation are the same virtual neuron up to sign; a lookup table scores
both alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import polars as pl
import torch

from neuron_assets.directions.covariance import Whitening
from neuron_assets.storage.schemas import DirectionRounds, polars_schema

E = TypeVar("E")
S = TypeVar("S")

LEARNING_RATE = 1e-2
BETAS = (0.9, 0.999)


def random_directions(n_directions: int, width: int, seed: int) -> np.ndarray:
    """``n_directions`` unit vectors drawn uniformly on the sphere in ``width`` dimensions (rows).

    More directions than the width (d_mlp) is a ValueError: they could not be independent.
    """
    if n_directions < 1:
        raise ValueError(f"at least 1 direction is needed, got {n_directions}")
    if n_directions > width:
        raise ValueError(f"{n_directions} directions asked for a layer of d_mlp {width}: at most {width}")
    gaussian = np.random.default_rng(seed).standard_normal((n_directions, width))
    return gaussian / np.linalg.norm(gaussian, axis=1, keepdims=True)


def direction_projection(whitening: Whitening | np.ndarray, directions: np.ndarray) -> np.ndarray:
    """P = Σ^{-1/2} Θᵀ (d × k), so that the virtual neurons of a batch are batch @ P.

    ``directions`` is k × d with unit rows; a wrong width, more rows than d, a zero or
    non-unit row, or non-finite values is a ValueError.
    """
    matrix = whitening.matrix if isinstance(whitening, Whitening) else np.asarray(whitening, dtype=np.float64)
    thetas = _check_directions(directions, matrix.shape[0])
    return matrix @ thetas.T


def virtual_neurons(activations: np.ndarray | torch.Tensor, projection: np.ndarray) -> np.ndarray:
    """a_θ for every direction: activations (…, d) @ P (d × k) → (…, k), in float64."""
    if isinstance(activations, torch.Tensor):
        activations = activations.detach().to("cpu", torch.float64).numpy()
    batch = np.asarray(activations, dtype=np.float64)
    if batch.shape[-1] != projection.shape[0]:
        raise ValueError(
            f"activations of width {batch.shape[-1]} but the projection is for width {projection.shape[0]}"
        )
    return batch @ projection


def correlation(simulation: np.ndarray, virtual: np.ndarray) -> float | None:
    """Pearson correlation of a simulation and a virtual neuron over tokens; None when either is constant."""
    s, a = np.asarray(simulation, dtype=np.float64), np.asarray(virtual, dtype=np.float64)
    if s.shape != a.shape or s.ndim != 1:
        raise ValueError(f"simulation of shape {s.shape} and virtual neuron of shape {a.shape} do not match")
    if len(s) < 2 or np.ptp(s) == 0 or np.ptp(a) == 0:
        return None
    return float(np.corrcoef(s, a)[0, 1])


def ascend(
    direction: np.ndarray,
    whitened: np.ndarray,
    simulation: np.ndarray,
    steps: int,
    learning_rate: float = LEARNING_RATE,
    betas: tuple[float, float] = BETAS,
) -> np.ndarray:
    """θ after ``steps`` Adam steps of gradient ascent on ρ(simulation, whitened @ θ), unit norm after each.

    ``whitened`` is the scoring tokens' activations times Σ^{-1/2} (tokens × d), ``simulation``
    the fixed simulation on those tokens. A constant simulation has no correlation to raise:
    ValueError, as for mismatched shapes or a non-unit θ.
    """
    theta0 = _check_directions(np.asarray(direction)[None, :], np.asarray(whitened).shape[-1])[0]
    # gradients whatever mode the caller (a bench, an inference pass) left on
    with torch.inference_mode(False), torch.enable_grad():
        z = torch.as_tensor(np.asarray(whitened, dtype=np.float64))
        s = torch.as_tensor(np.asarray(simulation, dtype=np.float64))
        if z.ndim != 2 or s.shape != (z.shape[0],):
            raise ValueError(f"whitened activations {tuple(z.shape)} and simulation {tuple(s.shape)} do not match")
        if steps < 0:
            raise ValueError(f"steps must be at least 0, got {steps}")
        s_centred = s - s.mean()
        if float(s_centred.norm()) == 0.0:
            raise ValueError("the simulation is constant over the scoring tokens: no correlation to ascend")
        s_unit = s_centred / s_centred.norm()
        z_centred = z - z.mean(dim=0)
        theta = torch.nn.Parameter(torch.as_tensor(theta0.copy()))
        optimizer = torch.optim.Adam([theta], lr=learning_rate, betas=betas)
        for _ in range(steps):
            optimizer.zero_grad()
            a = z_centred @ theta
            rho = (s_unit @ a) / a.norm().clamp_min(1e-30)
            (-rho).backward()
            optimizer.step()
            with torch.no_grad():
                theta /= theta.norm()
        return theta.detach().numpy().copy()


@dataclass(frozen=True)
class Explained(Generic[E, S]):
    """One direction's explanation step: the explanation, where it was scored and its simulation there.

    ``scoring`` is whatever ``resimulate`` needs to simulate another explanation on the same
    tokens (token ids, excerpts); ``activations`` are the layer's full activation vectors at
    those tokens (tokens × d) and ``simulation`` the explanation's simulation there (tokens).
    """

    explanation: E
    scoring: S
    activations: np.ndarray
    simulation: np.ndarray


@dataclass(frozen=True)
class Round(Generic[E]):
    """One direction in one round: θ, the explanation kept, its score on θ, and on θ after the update."""

    direction: int
    round: int
    theta: np.ndarray
    explanation: E
    correlation: float | None
    correlation_after_update: float | None
    reused_from_round: int | None


def coordinate_ascent(
    initial: np.ndarray,
    whitening: Whitening,
    explain: Callable[[np.ndarray], Sequence[Explained[E, S]]],
    resimulate: Callable[[E, Explained[E, S]], np.ndarray],
    rounds: int,
    steps_per_round: int,
) -> list[Round[E]]:
    """Every round of the coordinate ascent of every direction (rows of ``initial``).

    ``explain(Θ)`` gets all current directions (k × d) and returns one ``Explained`` per row,
    so one recording pass serves them all. ``resimulate(explanation, explained)`` simulates
    an earlier explanation on ``explained``'s scoring tokens. Each round explains, keeps the
    better of the new and the previously kept explanation on the new θ, records it, and
    (except in the last round) takes ``steps_per_round`` ascent steps. A row's ``correlation``
    is its explanation's score on that row's θ, so the last round holds the found directions.
    Each round's steps start a fresh Adam state (the simulation they ascend against is new);
    a direction whose kept explanation has no defined score (constant simulation or virtual
    neuron) is not moved in that round.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    matrix = whitening.matrix
    thetas = _check_directions(initial, matrix.shape[0]).copy()
    kept: list[tuple[E, int] | None] = [None] * len(thetas)
    history: list[Round[E]] = []
    for r in range(rounds):
        explained = list(explain(thetas.copy()))
        if len(explained) != len(thetas):
            raise ValueError(f"explain returned {len(explained)} explanations for {len(thetas)} directions")
        for i, new in enumerate(explained):
            whitened = np.asarray(new.activations, dtype=np.float64) @ matrix
            virtual = whitened @ thetas[i]
            choice, simulation, source = new.explanation, np.asarray(new.simulation, dtype=np.float64), None
            rho = correlation(simulation, virtual)
            if kept[i] is not None:
                old_explanation, old_round = kept[i]
                old_simulation = np.asarray(resimulate(old_explanation, new), dtype=np.float64)
                old_rho = correlation(old_simulation, virtual)
                if old_rho is not None and (rho is None or old_rho > rho):
                    choice, simulation, rho, source = old_explanation, old_simulation, old_rho, old_round
            kept[i] = (choice, r if source is None else source)
            theta = thetas[i].copy()
            after = None
            if r < rounds - 1 and rho is not None:
                thetas[i] = ascend(theta, whitened, simulation, steps_per_round)
                after = correlation(simulation, whitened @ thetas[i])
            history.append(Round(i, r, theta, choice, rho, after, source))
    return history


def rounds_frame(history: Sequence[Round[E]], layer: int, describe: Callable[[E], str] = str) -> pl.DataFrame:
    """The rounds as rows of ``DirectionRounds`` (without lineage), the explanation as ``describe`` writes it."""
    columns = [
        "layer",
        "direction",
        "round",
        "theta",
        "explanation",
        "correlation",
        "correlation_after_update",
        "reused_from_round",
    ]
    rows = [
        {
            "layer": layer,
            "direction": h.direction,
            "round": h.round,
            "theta": [float(x) for x in h.theta],
            "explanation": describe(h.explanation),
            "correlation": h.correlation,
            "correlation_after_update": h.correlation_after_update,
            "reused_from_round": h.reused_from_round,
        }
        for h in history
    ]
    return pl.DataFrame(rows, schema=polars_schema(DirectionRounds, columns))


def _check_directions(directions: np.ndarray, width: int) -> np.ndarray:
    thetas = np.asarray(directions, dtype=np.float64)
    if thetas.ndim != 2 or thetas.shape[1] != width:
        raise ValueError(f"directions of shape {thetas.shape} are not rows of width {width}")
    if len(thetas) > width:
        raise ValueError(f"{len(thetas)} directions for a layer of d_mlp {width}: at most {width}")
    if not np.isfinite(thetas).all():
        raise ValueError("directions contain non-finite values")
    norms = np.linalg.norm(thetas, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-6):
        bad = int(np.argmax(np.abs(norms - 1.0)))
        raise ValueError(f"direction {bad} has norm {norms[bad]:.6g}; directions must be unit vectors")
    return thetas
