from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.optimize import minimize_scalar

from napari_sparsefocus.core._focus_measures import brenner
from napari_sparsefocus.core._search import (
    SearchResult,
    SearchStep,
    brent_search,
    hill_climb,
    iter_brent_search,
    iter_hill_climb,
)

if TYPE_CHECKING:
    from collections.abc import Callable


class FakeMicroscope:
    """A stage + camera whose true focus is known; records every snap."""

    def __init__(
        self,
        texture: np.ndarray,
        z_true_um: float,
        *,
        z_min_um: float = -math.inf,
        z_max_um: float = math.inf,
        rgb: bool = False,
    ) -> None:
        self.texture = texture
        self.z_true_um = z_true_um
        self.z_min_um = z_min_um
        self.z_max_um = z_max_um
        self.rgb = rgb
        self.calls: list[float] = []

    def sigma(self, z_um: float) -> float:
        return 0.5 + 0.4 * abs(z_um - self.z_true_um)

    def snap(self, z_um: float) -> np.ndarray:
        if not self.z_min_um <= z_um <= self.z_max_um:
            raise RuntimeError(f"stage driven out of range: {z_um}")
        self.calls.append(z_um)
        image: np.ndarray = gaussian_filter(self.texture, self.sigma(z_um))
        if self.rgb:
            return np.repeat(image[..., None], 3, axis=-1)
        return image

    def moves(self, z_start_um: float | None) -> int:
        previous = z_start_um
        count = 0
        for z in self.calls:
            if previous is None or z != previous:
                count += 1
            previous = z
        return count


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    return np.random.default_rng(99).uniform(0.0, 1.0, size=(48, 48))


def drain(
    gen: object,
) -> tuple[list[SearchStep], SearchResult]:
    steps: list[SearchStep] = []
    while True:
        try:
            steps.append(next(gen))  # type: ignore[call-overload]
        except StopIteration as stop:
            return steps, stop.value


@pytest.mark.parametrize("z_true", [1.7, -3.3, 12.45])
@pytest.mark.parametrize("z_start", [-20.0, -6.0, 0.0, 7.5, 20.0])
def test_hill_climb_finds_focus(texture: np.ndarray, z_true: float, z_start: float) -> None:
    scope = FakeMicroscope(texture, z_true)
    result = hill_climb(scope.snap, z_start, min_step_um=0.25)
    assert abs(result.z_best_um - z_true) <= 0.25
    assert result.converged
    assert result.snaps == len(scope.calls)
    assert result.moves == scope.moves(z_start)
    assert [z for z, _ in result.history] == scope.calls
    # No position is snapped twice.
    assert len({round(z, 6) for z in scope.calls}) == len(scope.calls)
    assert result.final_move_needed == (scope.calls[-1] != result.z_best_um)
    # The best score is the best one recorded.
    assert result.score_best == max(s for _, s in result.history)


def test_hill_climb_generator_yields_one_record_per_snap(texture: np.ndarray) -> None:
    scope = FakeMicroscope(texture, 2.2)
    steps, result = drain(iter_hill_climb(scope.snap, -8.0))
    assert len(steps) == len(scope.calls) == result.snaps
    assert [s.z_um for s in steps] == scope.calls
    assert [s.snaps for s in steps] == list(range(1, len(steps) + 1))
    assert [s.moves for s in steps] == sorted(s.moves for s in steps)
    assert steps[-1].moves == result.moves
    for step in steps:
        expected = brenner(gaussian_filter(texture, scope.sigma(step.z_um)))
        assert step.score == pytest.approx(expected, rel=1e-12)
    assert steps[-1].z_best_um == result.z_best_um
    assert isinstance(result, SearchResult)


def test_first_snap_at_start_is_not_a_move(texture: np.ndarray) -> None:
    scope = FakeMicroscope(texture, 0.0)
    gen = iter_hill_climb(scope.snap, 3.0)
    first = next(gen)
    assert first.z_um == 3.0
    assert first.snaps == 1
    assert first.moves == 0
    second = next(gen)
    assert second.moves == 1
    gen.close()


def test_hill_climb_respects_bounds(texture: np.ndarray) -> None:
    # True focus beyond the upper travel limit: the stage must stay in range.
    scope = FakeMicroscope(texture, 8.0, z_min_um=-5.0, z_max_um=5.0)
    result = hill_climb(scope.snap, 0.0, z_min_um=-5.0, z_max_um=5.0, step_um=4.0)
    assert all(-5.0 <= z <= 5.0 for z in scope.calls)
    assert result.z_best_um == 5.0
    assert not result.converged
    assert "bound" in result.reason


def test_hill_climb_respects_budget(texture: np.ndarray) -> None:
    scope = FakeMicroscope(texture, 15.0)
    result = hill_climb(scope.snap, -15.0, max_snaps=5, step_um=2.0)
    assert len(scope.calls) == result.snaps == 5
    assert not result.converged
    assert "budget" in result.reason
    # Best so far is still reported and was climbing towards focus.
    assert result.z_best_um == max(scope.calls)


def test_hill_climb_rgb_images(texture: np.ndarray) -> None:
    scope = FakeMicroscope(texture, -1.1, rgb=True)
    result = hill_climb(scope.snap, 4.0, channel_axis=-1, measure="tenengrad")
    assert abs(result.z_best_um - (-1.1)) <= 0.25


@pytest.mark.parametrize("z_true", [-14.2, -0.37, 3.0, 17.9])
def test_brent_finds_focus(texture: np.ndarray, z_true: float) -> None:
    scope = FakeMicroscope(texture, z_true, z_min_um=-20.0, z_max_um=20.0)
    steps, result = drain(iter_brent_search(scope.snap, -20.0, 20.0, xtol_um=0.1))
    assert abs(result.z_best_um - z_true) <= 2 * 0.1
    assert result.converged
    assert result.snaps == len(scope.calls) == len(steps) <= 30
    assert result.moves == scope.moves(None)
    assert [s.z_um for s in steps] == scope.calls
    assert all(-20.0 <= z <= 20.0 for z in scope.calls)


@pytest.mark.parametrize("z_true", [4.4, -7.1])
def test_brent_agrees_with_scipy_bounded(texture: np.ndarray, z_true: float) -> None:
    scope = FakeMicroscope(texture, z_true)
    ours = brent_search(scope.snap, -10.0, 10.0, xtol_um=0.05)
    reference = minimize_scalar(
        lambda z: -brenner(scope.snap(float(z))),
        bounds=(-10.0, 10.0),
        method="bounded",
        options={"xatol": 0.05},
    )
    # Same algorithm and termination rule: same point, same number of snaps.
    assert ours.z_best_um == pytest.approx(reference.x, abs=1e-6)
    assert ours.snaps == reference.nfev


def test_brent_budget_and_start(texture: np.ndarray) -> None:
    scope = FakeMicroscope(texture, 1.0)
    result = brent_search(scope.snap, -20.0, 20.0, max_snaps=4, xtol_um=0.01)
    assert len(scope.calls) == result.snaps == 4
    assert not result.converged
    assert "budget" in result.reason
    scope2 = FakeMicroscope(texture, 1.0)
    first_z = -20.0 + (3 - math.sqrt(5)) / 2 * 40.0
    r2 = brent_search(scope2.snap, -20.0, 20.0, z_start_um=first_z, max_snaps=3)
    assert scope2.calls[0] == pytest.approx(first_z)
    assert r2.moves == scope2.moves(first_z)


def test_results_are_frozen(texture: np.ndarray) -> None:
    result = hill_climb(FakeMicroscope(texture, 0.0).snap, 0.0, max_snaps=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.snaps = 0  # type: ignore[misc]


def _never(z: float) -> np.ndarray:
    raise AssertionError("snap must not be called for invalid arguments")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"step_um": 0.0}, ValueError),
        ({"step_um": -1.0}, ValueError),
        ({"min_step_um": 0.0}, ValueError),
        ({"min_step_um": 8.0, "step_um": 4.0}, ValueError),
        ({"step_um": math.nan}, ValueError),
        ({"z_min_um": 5.0, "z_max_um": 5.0}, ValueError),
        ({"z_min_um": 1.0, "z_max_um": 5.0}, ValueError),  # start 0 outside
        ({"max_snaps": 0}, ValueError),
        ({"max_snaps": 2.5}, TypeError),
        ({"max_snaps": True}, TypeError),
        ({"measure": "nope"}, ValueError),
        ({"step_um": "4"}, TypeError),
    ],
)
def test_hill_climb_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        hill_climb(_never, 0.0, **kwargs)


@pytest.mark.parametrize(
    ("lo", "hi", "kwargs"),
    [
        (1.0, 1.0, {}),
        (2.0, 1.0, {}),
        (-math.inf, 1.0, {}),
        (0.0, 1.0, {"xtol_um": 0.0}),
        (0.0, 1.0, {"max_snaps": 0}),
        (0.0, 1.0, {"measure": "nope"}),
    ],
)
def test_brent_bad_arguments(lo: float, hi: float, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        brent_search(_never, lo, hi, **kwargs)


def test_snap_must_be_callable() -> None:
    snap: Callable[[float], np.ndarray] = None  # type: ignore[assignment]
    with pytest.raises(TypeError, match="snap"):
        hill_climb(snap, 0.0)
