"""Target codes for the class-centre term (METHOD.md section 6).

Each training class gets a K-bit target code. Rows of a Hadamard matrix are ideal: every row
but the first is balanced (K/2 ones) and any two rows differ in exactly K/2 bits. A row's
complement is at distance K from it and K/2 from every other row, so rows and complements
give 2K - 2 balanced codes at pairwise distance >= K/2. When the classes do not fit, or no
Hadamard matrix of order K is built here, balanced random codes are drawn and their minimum
pairwise distance is checked.
"""

from __future__ import annotations

import numpy as np

from dahash_index.errors import check_bits


class CentreCodeError(ValueError):
    """No set of target codes with the required distance could be made."""


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _paley(q: int) -> np.ndarray:
    """Paley construction I: a Hadamard matrix of order q + 1 for a prime q = 3 (mod 4)."""
    residues = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in residues else -1 for i in range(1, q)])
    jacobsthal = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])
    s = np.zeros((q + 1, q + 1), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = jacobsthal
    return s + np.eye(q + 1, dtype=np.int64)


def hadamard(order: int) -> np.ndarray | None:
    """A Hadamard matrix (order, order) of +-1 int64, or None when none is built here.

    Built as a Sylvester power of 2 times a Paley matrix: orders 2^a and 2^a (q + 1) for
    primes q = 3 (mod 4) (16, 24, 32, 40, 48, 64, ... among multiples of 8). The first row and
    first column are all +1.
    """
    core, power = order, 1
    while core % 2 == 0 and core > 1:
        core //= 2
        power *= 2
    base = np.ones((1, 1), dtype=np.int64)
    # Try the largest Paley factor first: order = 2^b * (q + 1) with q + 1 = core * 2^c.
    for extra in range(int(np.log2(power)) + 1):
        q = core * 2**extra - 1
        if q == 0:
            base = np.ones((1, 1), dtype=np.int64)
        elif q % 4 == 3 and _is_prime(q):
            base = _paley(q)
        else:
            continue
        matrix = base
        while matrix.shape[0] < order:
            matrix = np.block([[matrix, matrix], [matrix, -matrix]])
        if matrix.shape[0] == order:
            # Normalise so the first row is all +1 (negating columns keeps it Hadamard).
            return matrix * matrix[0][None, :]
    return None


def balanced_random_codes(
    n_classes: int, bits: int, min_distance: int, seed: int, tries: int = 1000
) -> np.ndarray:
    """n_classes codes (n_classes, bits) bool, each with bits/2 ones, pairwise Hamming
    distance >= min_distance; CentreCodeError when ``tries`` draws all fail."""
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        codes = np.zeros((n_classes, bits), dtype=bool)
        for row in codes:
            row[rng.choice(bits, bits // 2, replace=False)] = True
        if n_classes < 2 or min_pairwise_distance(codes) >= min_distance:
            return codes
    raise CentreCodeError(
        f"no {n_classes} balanced {bits}-bit codes at pairwise distance >= {min_distance} "
        f"in {tries} draws; lower the distance or use more bits"
    )


def min_pairwise_distance(codes: np.ndarray) -> int:
    """Smallest Hamming distance between two distinct rows of (n, K) bool codes (n >= 2)."""
    c = np.asarray(codes, dtype=np.int64)
    d = c @ (1 - c).T + (1 - c) @ c.T
    np.fill_diagonal(d, c.shape[1] + 1)
    return int(d.min())


def centre_codes(n_classes: int, bits: int, seed: int = 0) -> np.ndarray:
    """Target codes (n_classes, bits) bool, one per class, balanced and far apart.

    Hadamard rows 1..K-1 (then their complements) when 2K - 2 >= n_classes and a Hadamard
    matrix of order K is built here: pairwise distance >= K/2. Otherwise balanced random codes
    at pairwise distance >= K/4. Which class gets which row is a seeded permutation.
    """
    check_bits(bits)
    if n_classes < 1:
        raise CentreCodeError(f"need at least one class, got {n_classes}")
    rng = np.random.default_rng(seed)
    h = hadamard(bits)
    if h is not None and n_classes <= 2 * bits - 2:
        rows = h[1:] > 0  # row 0 is all ones: unbalanced
        candidates = np.concatenate([rows[rng.permutation(len(rows))], ~rows])
        chosen = candidates[:n_classes]
        return chosen[rng.permutation(n_classes)]
    return balanced_random_codes(n_classes, bits, bits // 4, seed)
