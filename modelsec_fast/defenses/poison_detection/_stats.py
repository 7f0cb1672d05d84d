"""Per-class statistics the detectors share: principal directions, the exact 1-D
two-means split, two-means in a few dimensions, silhouettes, and which of two groups
of a class is the poison.

All functions stay on the tensors' device. The wide (n, D) work is done in the
features' own float dtype (float32 halves its memory traffic); the small per-sample
and per-direction quantities are float64.

Which group is the poison. A dirty-label attack (BadNets, Blended, WaNet, label
flips) relabels samples of other classes, and at a 10% all-to-one rate they make up
about half of the target class, so "the smaller group is the poison" (Chen et al.)
or "the poisons lie far from the class mean" (Tran et al.) are coin flips there. The
rule used instead: remove the direction that separates the two groups; in what is
left, a poisoned sample still resembles the class it came from, so the poison group
is the one whose members lie closer to another class's centroid than to their own
class's centroid (higher mean ``distance to own centroid - distance to the nearest
other centroid``). With no other class, the smaller group is taken.
"""

from __future__ import annotations

import torch

__all__ = ["top_directions", "split_1d", "separation", "poison_group", "two_means",
           "silhouettes"]


# Up to this size the smaller Gram matrix is decomposed exactly; above it, a seeded
# randomized subspace iteration finds the top directions in O(n D k) instead of O(n^2 D).
EXACT_SIZE = 256
OVERSAMPLE = 10
POWER_ITERATIONS = 2


def top_directions(centered: torch.Tensor, k: int, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` right singular vectors (D, k) of ``centered`` (n, D) and their
    squared singular values (k,), descending.

    Exact (eigh of the smaller Gram matrix) when ``min(n, D) <= EXACT_SIZE``; otherwise
    a randomized subspace iteration (Halko, Martinsson, Tropp 2011: ``k + 10`` Gaussian
    probes drawn from ``generator``, 2 power iterations with re-orthonormalisation),
    which is exact up to rounding when the spectrum has a gap after the k-th value.
    """
    n, d = centered.shape
    k = max(1, min(k, n, d))
    if min(n, d) <= EXACT_SIZE:
        if d <= n:
            values, vectors = torch.linalg.eigh((centered.T @ centered).double())
            return vectors.flip(1)[:, :k].to(centered.dtype), values.flip(0)[:k].clamp_min(0.0)
        values, vectors = torch.linalg.eigh((centered @ centered.T).double())
        values, vectors = values.flip(0)[:k].clamp_min(0.0), vectors.flip(1)[:, :k]
        right = centered.T @ vectors.to(centered.dtype)
        return right / right.norm(dim=0, keepdim=True).clamp_min(1e-30), values
    q = min(k + OVERSAMPLE, n, d)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    probes = torch.randn(d, q, generator=generator, dtype=centered.dtype).to(centered.device)
    # Small factors made contiguous and products taken as (basis^T A)^T: a transposed
    # large operand against a strided QR factor is far slower.
    basis = torch.linalg.qr(centered @ probes).Q.contiguous()
    for _ in range(POWER_ITERATIONS):
        right = torch.linalg.qr((basis.T @ centered).T).Q.contiguous()
        basis = torch.linalg.qr(centered @ right).Q.contiguous()
    _, sigma, vh = torch.linalg.svd(basis.T @ centered, full_matrices=False)
    return vh[:k].T, (sigma[:k].double() ** 2)


def split_1d(p: torch.Tensor) -> torch.Tensor:
    """Exact two-means of the values ``p`` (n,): bool (n,), True for the upper group.

    Sorting and prefix sums give every split's between-group sum of squares at once.
    """
    n = p.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.bool, device=p.device)
    values, order = p.sort()
    prefix = values.cumsum(0)
    total = prefix[-1]
    k = torch.arange(1, n, device=p.device, dtype=p.dtype)  # size of the lower group
    lower = prefix[:-1]
    between = (lower - k * total / n) ** 2 * n / (k * (n - k))
    cut = int(between.argmax()) + 1
    upper = torch.zeros(n, dtype=torch.bool, device=p.device)
    upper[order[cut:]] = True
    return upper


def separation(p: torch.Tensor, group: torch.Tensor) -> float:
    """|mean difference| of the two groups of ``p`` over their pooled standard deviation."""
    a, b = p[group], p[~group]
    if len(a) < 2 or len(b) < 2:
        return 0.0
    pooled = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / (len(p) - 2)
    return float((a.mean() - b.mean()).abs() / pooled.sqrt().clamp_min(1e-30))


def poison_group(features: torch.Tensor, group: torch.Tensor, direction: torch.Tensor,
                 other_centroids: torch.Tensor) -> tuple[bool, dict]:
    """Whether ``group`` (bool (n,)) rather than its complement is the poison of a class.

    Args:
        features: (n, D) the class's features; direction: (D,) what separates the
            groups; other_centroids: (K-1, D) the other classes' centroids.

    Returns:
        (True if ``group`` is the poison, the statistic of each group).
    """
    if group.all() or (~group).all():
        return bool(group.all()), {}
    if other_centroids.shape[0] == 0:
        return bool(group.sum() <= (~group).sum()), {"rule": "smaller group (no other class)"}
    u = (direction / direction.norm().clamp_min(1e-30)).to(features.dtype)
    # Distances with u projected out, from inner products only (no (n, D) temporaries):
    # |P(a)|^2 = |a|^2 - (a.u)^2 for the projection P that removes u.
    a = features - features.mean(0)
    b = (other_centroids - features.mean(0)).to(a.dtype)
    au, bu = a @ u, b @ u
    a2 = (a * a).sum(1)
    own = (a2 - au ** 2).clamp_min(0.0).sqrt()
    cross = a2[:, None] - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    nearest = (cross - (au[:, None] - bu[None, :]) ** 2).clamp_min(0.0).min(1).values.sqrt()
    inconsistency = (own - nearest).double()
    in_group, out_group = float(inconsistency[group].mean()), float(inconsistency[~group].mean())
    return in_group > out_group, {"label_inconsistency": [in_group, out_group]}


def two_means(z: torch.Tensor, start: torch.Tensor, generator: torch.Generator,
              restarts: int = 2, iterations: int = 50) -> torch.Tensor:
    """Two-means of the rows of ``z`` (n, d): bool (n,) membership of cluster 1.

    Lloyd's iterations from ``start`` (a bool split) and from ``restarts`` k-means++
    seedings drawn from ``generator``; the lowest within-cluster sum of squares wins.
    """
    n = z.shape[0]
    candidates = [start]
    for _ in range(restarts):
        first = int(torch.randint(n, (1,), generator=generator))
        d2 = ((z - z[first]) ** 2).sum(1)
        weights = (d2 / d2.sum().clamp_min(1e-30)).cpu()
        second = int(torch.multinomial(weights, 1, generator=generator)) if float(d2.sum()) > 0 \
            else first
        candidates.append(((z - z[second]) ** 2).sum(1) < d2)
    best, best_cost = start, float("inf")
    for member in candidates:
        member = member.clone()
        for _ in range(iterations):
            if member.all() or (~member).all():
                break
            centres = torch.stack([z[~member].mean(0), z[member].mean(0)])
            new = torch.cdist(z, centres).argmin(1).bool()
            if torch.equal(new, member):
                break
            member = new
        if member.all() or (~member).all():
            continue
        cost = float(((z[member] - z[member].mean(0)) ** 2).sum()
                     + ((z[~member] - z[~member].mean(0)) ** 2).sum())
        if cost < best_cost:
            best, best_cost = member, cost
    return best


def _mean_distances(z: torch.Tensor, reference: torch.Tensor, chunk: int) -> torch.Tensor:
    """(n,) mean Euclidean distance of each row of ``z`` to the rows of ``reference``."""
    if reference.shape[0] == 0:
        return torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    return torch.cat([torch.cdist(z[i:i + chunk], reference).mean(1)
                      for i in range(0, z.shape[0], chunk)])


def silhouettes(z: torch.Tensor, member: torch.Tensor, generator: torch.Generator,
                max_reference: int = 4096, chunk: int = 2048) -> torch.Tensor:
    """Per-sample silhouette (n,) of a two-cluster split ``member`` of the rows of ``z``.

    ``s = (b - a) / max(a, b)`` with ``a`` the mean distance to the rest of the own
    cluster and ``b`` to the other cluster. Exact when each cluster has at most
    ``max_reference`` members; otherwise the means are taken over that many members
    drawn from ``generator`` (an unbiased estimate). Members of a singleton cluster get 0.
    """
    out = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    clusters = [member, ~member]
    refs = []
    for c in clusters:
        idx = torch.nonzero(c).flatten()
        if len(idx) > max_reference:
            pick = torch.randperm(len(idx), generator=generator)[:max_reference].to(idx.device)
            idx = idx[pick]
        refs.append(idx)
    for own, other_ref, own_ref in ((0, refs[1], refs[0]), (1, refs[0], refs[1])):
        idx = torch.nonzero(clusters[own]).flatten()
        size = len(idx)
        if size < 2:
            continue
        a = _mean_distances(z[idx], z[own_ref], chunk)
        exact = len(own_ref) == size
        if exact:
            a = a * size / (size - 1)  # the zero distance to itself is not a neighbour
        b = _mean_distances(z[idx], z[other_ref], chunk)
        out[idx] = (b - a) / torch.maximum(a, b).clamp_min(1e-30)
    return out
