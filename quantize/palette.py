"""Per-row palettes on the int8 grid and error-compensating rounding onto them.

A Conv weight ``W`` (rows = output channels, columns = Cin·kh·kw) with per-row int8 scales ``s`` is coded as
``Q`` (int8) with at most ``2**bits`` distinct values per row, dequantized exactly like int8 (``Q·s``). The
loss is the Conv's output error on calibration patches, ``tr(ΔW H ΔWᵀ)`` with ``H = E[x xᵀ]``
(quantize.codec_stats), in grid units ``T = W / s``.

1. Palettes: per row, a 1-D k-means of ``T``'s entries weighted by their column's ``diag(H)`` (what an error
   in that column costs), with the row's smallest and largest grid values kept as levels (the rare large
   weights set the scale; a count-weighted k-means would merge them into the bulk).
2. Rounding: columns in order of decreasing ``diag(H)``, each rounded to its row's nearest level, its error
   spread over the columns not yet rounded through the Cholesky factor of ``H⁻¹`` (the optimal-brain-
   surgeon update), in blocks whose deferred updates are one matrix product.
3. Refit: each level moves to the mean of the (error-compensated) values rounded to it, weighted like the
   rounding's loss, back onto the grid; then 2 again; a row keeps its best result.

Rows are independent given H, so several widths of one layer are rounded in one pass: their rows are stacked
(each with its own palette, padded to a common length by repeating its last level).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg
from threadpoolctl import threadpool_limits

GRID = (-128, 127)
BLOCK = 128
# Levels are integers, so the midpoints between them are multiples of 1/2: the nearest level of x depends only
# on floor(2x), a table lookup. Table index of floor(2x) = k: k - 2·GRID[0] + 1, k clipped to the grid.
_LUT_LOW, _LUT_SIZE = 2 * GRID[0] - 1, 2 * (GRID[1] - GRID[0]) + 3


@dataclass
class Rounded:
    q: np.ndarray  # rows × columns, integer values (float32)
    row_loss: np.ndarray  # per row: Σ_j (error_j / U_jj)², the rounding's loss in grid units
    compensated: np.ndarray  # the values each entry was rounded from (after earlier columns' feedback)
    weight: np.ndarray  # per column: 1 / U_jj², the loss weight of a rounding error there


def prepare_hessian(h: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(order, upper Cholesky factor U of the damped H⁻¹ = UᵀU in that order, float32). ``order`` sorts
    columns by decreasing ``diag(H)``; never-active inputs get a unit diagonal. Rounding with U accumulates,
    per row, ΔᵀH_damped Δ (``Rounded.row_loss``)."""
    h = np.array(h, dtype=np.float32)
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable")
    h = h[np.ix_(order, order)]
    for attempt in range(6):
        damped = h.copy()
        added = damp * (10 ** attempt) * float(np.mean(np.diag(h)))
        damped[np.diag_indices_from(damped)] += added
        # H⁻¹ = UᵀU with U upper: with J the order reversal and J H J = L Lᵀ (lower L), U = J L⁻¹ J.
        # one BLAS thread: OpenBLAS's threaded potrf/trtri block differently (other last bits, measured on a
        # 4608² H), and one thread is as fast there
        with threadpool_limits(1, user_api="blas"):
            try:
                lower = linalg.cholesky(damped[::-1, ::-1], lower=True, overwrite_a=True, check_finite=False)
            except linalg.LinAlgError:
                continue
            inverse, info = linalg.lapack.strtri(lower, lower=1, overwrite_c=1)
        if info == 0 and np.isfinite(inverse).all():
            return order, np.ascontiguousarray(inverse[::-1, ::-1])
    raise np.linalg.LinAlgError("H is not positive definite even with strong damping")


def lookup_table(levels: np.ndarray) -> np.ndarray:
    """Per row, the index of the nearest level for each floor(2x) on the grid (rows × _LUT_SIZE, uint8);
    ``levels`` rows ascending."""
    # x with floor(2x) = k lies in [k/2, (k+1)/2): it is above a midpoint m (a multiple of 1/2) iff k/2 >= m.
    halves = np.broadcast_to((np.arange(_LUT_SIZE) + _LUT_LOW) * 0.5, (levels.shape[0], _LUT_SIZE))
    return row_searchsorted((levels[:, 1:] + levels[:, :-1]) * 0.5, halves, "right").astype(np.uint8)


def row_searchsorted(edges: np.ndarray, values: np.ndarray, side: str = "left") -> np.ndarray:
    """``np.searchsorted(edges[r], values[r], side)`` for every row r at once (rows of ``edges`` ascending):
    rows are moved apart by a stride larger than any value's range so that one sorted array holds them all."""
    rows = edges.shape[0]
    if edges.shape[1] == 0:
        return np.zeros(values.shape, np.int64)
    span = float(max(np.abs(edges).max(), np.abs(values).max())) * 2 + 1
    shift = (np.arange(rows, dtype=np.float64) * span)[:, None]
    found = np.searchsorted((edges + shift).reshape(-1), (values + shift).reshape(-1), side=side)
    return found.reshape(values.shape) - (np.arange(rows) * edges.shape[1])[:, None]


def nearest_index(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Nearest-level index of ``values`` (rows × n) through ``lookup_table``."""
    k = np.clip(np.floor(values * 2.0).astype(np.int64) - _LUT_LOW, 0, _LUT_SIZE - 1)
    return np.take_along_axis(table, k, axis=1)


def level_means(index: np.ndarray, values: np.ndarray, weight: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Per row and level, the ``weight``-weighted mean of the ``values`` whose ``index`` is that level (the
    level itself where none is)."""
    rows, size = levels.shape
    flat = (np.arange(rows)[:, None] * size + index).reshape(-1)
    w = np.broadcast_to(weight, values.shape).reshape(-1).astype(np.float64)
    sums = np.bincount(flat, w * values.reshape(-1), rows * size).reshape(rows, size)
    mass = np.bincount(flat, w, rows * size).reshape(rows, size)
    return np.where(mass > 0, sums / np.maximum(mass, 1e-300), levels)


def init_palettes(target: np.ndarray, importance: np.ndarray, bits: int, iterations: int = 12) -> np.ndarray:
    """Per row, 2**bits levels on the grid (ascending, possibly repeated): weighted k-means of ``target``
    (rows × n) with ``importance`` (n) as weights, the row's extreme grid values pinned."""
    size = 1 << bits
    rows = target.shape[0]
    lo = np.clip(np.rint(target.min(axis=1)), *GRID)
    hi = np.clip(np.rint(target.max(axis=1)), *GRID)
    inner = np.quantile(target, np.linspace(0.0, 1.0, size)[1:-1], axis=1).T if size > 2 else np.zeros((rows, 0))
    levels = np.concatenate([lo[:, None], inner, hi[:, None]], axis=1)
    for _ in range(iterations):
        levels.sort(axis=1)
        index = row_searchsorted((levels[:, 1:] + levels[:, :-1]) * 0.5, target)
        moved = level_means(index, target, importance[None, :], levels)
        moved[:, 0], moved[:, -1] = lo, hi
        if np.allclose(moved, levels, atol=1e-3):
            break
        levels = moved
    return np.sort(np.clip(np.rint(levels), *GRID), axis=1)


def round_to_palettes(target: np.ndarray, levels: np.ndarray, order: np.ndarray, upper: np.ndarray) -> Rounded:
    """GPTQ-style rounding of ``target`` (rows × columns, grid units) onto per-row ``levels`` (ascending),
    columns in ``order``; ``upper`` is ``prepare_hessian``'s factor for that order."""
    rows, columns = target.shape
    # columns × rows: a column is a contiguous vector. The nearest level's value per (row, floor(2x)) is a
    # table, flattened so that one gather rounds a whole column.
    work = np.ascontiguousarray(target[:, order].T, dtype=np.float32)
    values = np.take_along_axis(levels, lookup_table(levels).astype(np.int64), axis=1).astype(np.float32).reshape(-1)
    offsets = (np.arange(rows) * _LUT_SIZE - _LUT_LOW).astype(np.float32)  # exact: |values| < 2**24
    q = np.empty_like(work)
    compensated = np.empty_like(work)
    errors = np.empty((BLOCK, rows), np.float32)
    loss = np.zeros(rows, np.float32)
    scratch = np.empty(rows, np.float32)
    inverse_diag = (1.0 / np.diag(upper)).astype(np.float32)
    for start in range(0, columns, BLOCK):
        end = min(start + BLOCK, columns)
        block = work[start:end]
        for j in range(end - start):
            column = block[j]
            compensated[start + j] = column
            np.multiply(column, 2.0, out=scratch)
            np.floor(scratch, out=scratch)
            np.clip(scratch, _LUT_LOW, _LUT_LOW + _LUT_SIZE - 1, out=scratch)
            scratch += offsets
            chosen = values.take(scratch.astype(np.intp))
            q[start + j] = chosen
            error = errors[j]
            np.subtract(column, chosen, out=error)
            error *= inverse_diag[start + j]
            loss += error * error
            if j + 1 < end - start:
                block[j + 1:] -= upper[start + j, start + j + 1:end, None] * error[None, :]
        if end < columns:
            work[end:] -= upper[start:end, end:].T @ errors[:end - start]
    inverse_order = np.empty_like(order)  # order's inverse permutation (no sort: numpy's AVX2 argsort of
    inverse_order[order] = np.arange(order.size)  # int64 crashes under qemu-user, bench/reproduce.py's AVX2 CPU)
    return Rounded(q.T[:, inverse_order], loss.astype(np.float64), compensated.T[:, inverse_order],
                   (inverse_diag.astype(np.float64) ** 2)[inverse_order])


def refit_palettes(rounded: Rounded, levels: np.ndarray) -> np.ndarray:
    """Each level → the loss-weighted mean of the compensated values rounded to it (on the grid); a level no
    value uses stays."""
    index = nearest_index(rounded.q, lookup_table(levels))
    moved = level_means(index, rounded.compensated, rounded.weight[None, :], levels)
    return np.sort(np.clip(np.rint(moved), *GRID), axis=1)


def pad_levels(levels: np.ndarray, size: int) -> np.ndarray:
    """``levels`` (rows × L, ascending) widened to ``size`` columns by repeating each row's last level."""
    return np.concatenate([levels, np.repeat(levels[:, -1:], size - levels.shape[1], axis=1)], axis=1)


def palette_rounding(target: np.ndarray, importance: np.ndarray, widths: list[int], order: np.ndarray,
                     upper: np.ndarray, refits: int) -> dict[int, np.ndarray]:
    """``target`` coded at each of ``widths`` (one stacked pass per refit round): width → int8 rows."""
    rows = target.shape[0]
    size = 1 << max(widths)
    stacked = np.concatenate([target] * len(widths))
    palettes = [init_palettes(target, importance, b) for b in widths]
    best = round_to_palettes(stacked, np.concatenate([pad_levels(p, size) for p in palettes]), order, upper)
    best_q, best_loss = best.q.copy(), best.row_loss.copy()
    for _ in range(refits):
        palettes = [refit_palettes(_rows(best, i * rows, (i + 1) * rows), p) for i, p in enumerate(palettes)]
        again = round_to_palettes(stacked, np.concatenate([pad_levels(p, size) for p in palettes]), order, upper)
        better = again.row_loss < best_loss
        if not better.any():
            break
        best_q[better], best_loss[better] = again.q[better], again.row_loss[better]
        best = again
    return {b: best_q[i * rows:(i + 1) * rows].astype(np.int8) for i, b in enumerate(widths)}


def _rows(rounded: Rounded, start: int, end: int) -> Rounded:
    return Rounded(rounded.q[start:end], rounded.row_loss[start:end], rounded.compensated[start:end], rounded.weight)


def output_error(delta: np.ndarray, h: np.ndarray) -> float:
    """tr(Δ H Δᵀ)."""
    return float(np.einsum("ij,ij->", delta @ h, delta))
