"""The one ranking: scan vectors in, ranked products and a decision out, over a frozen
snapshot of fitted stages (`Snapshot`). The live path, the refit's check of a learned metric
and the accuracy benchmark all call `rank`; nothing else ranks.

The stages, in the order they act (`Snapshot.stages`; each module in `stages/`):

1. **centring** — the query is centred on the scan domain's mean and searched (catalog images
   only until that mean is known); each candidate's score is corrected by its best image's
   domain mean;
2. **re-ranking** — in the active space (the metric learned from confirmations, else the
   scans' whitening), the candidates are re-scored by their product prototypes (a piece cut
   from a set's catalog image competing on its own), less each one's hub penalty, plus the
   **colour** term where the scan shows colour;
3. **detail** — the first few candidates are re-scored by the local detail (keypoints in one
   geometry) the scan's photo shares with each one's best reference image, and re-ordered;
4. **new products first** — a scan whose closest catalog product has no confirmed photo yet
   is ranked again, through stages 1–3 against catalog images in the whitened space;
5. **confidence** — the probability that the first product is right, learned from this
   deployment's confirmations (the prior, a margin threshold, until enough exist), and the
   decision: `matched` from the threshold that keeps the target precision.

The detail stage acts where the scan's photo is at hand (`details`): the live path and the
benchmark. The refit ranks confirmations from their vectors alone, so the confidence is
learned from rankings without it and is asked about scores before it
(`DetailStage.decision_scores`): detail re-orders, and can only take confidence away.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from shared.contract import MatchStatus, RankedProduct, S3Object
from worker.index.base import ProductHit, VectorIndex
from worker.matching.stages.centring import Centring, image_references
from worker.matching.stages.colour import ColourTerm
from worker.matching.stages.confidence import Confidence
from worker.matching.stages.detail import DetailStage, ScanDetails
from worker.matching.stages.new_products import NewProductsFirst
from worker.matching.stages.space import RerankSpace
from worker.vectors import (
    SOURCE_CATALOG,
    SOURCE_CONFIRMED_SCAN,
    VectorLayout,
    unit_rows,
    whole_image_id,
)


@dataclass(frozen=True)
class MatchPolicy:
    """What the decision is asked for: before labels, the best product is not trusted when its
    score is too low or a runner-up too close (the prior); after, `target_precision`."""

    min_score: float = 0.0
    min_margin: float = 0.0
    target_precision: float = 0.99

    def prior(self) -> Confidence:
        return Confidence.prior(self.min_margin, self.min_score)


@dataclass(frozen=True)
class Snapshot:
    """Every fitted stage, as of one fit; never changed in place (a refit makes another)."""

    layout: VectorLayout
    centring: Centring = field(default_factory=Centring)
    space: RerankSpace | None = None
    """Where candidates are re-ranked: the learned metric, else the whitening, else none."""
    whitening: RerankSpace | None = None
    """The scans' whitening, kept when the metric takes over: new products are ranked in it."""
    new_products: NewProductsFirst = field(default_factory=NewProductsFirst)
    policy: MatchPolicy = MatchPolicy()
    confidence: Confidence | None = None
    """The decision stage; None: the policy's prior."""
    rerank_candidates: int = 20
    detail: DetailStage = field(default_factory=DetailStage)
    """Not fitted (set from settings); acts only where a scan's photo is at hand."""
    fitted_at: float = 0.0
    report: dict = field(default_factory=dict)

    @property
    def colour(self) -> ColourTerm:
        return ColourTerm(self.layout.colour_weight)

    @property
    def stages(self) -> list[str]:
        """The stages that act on a scan now, in order (for logs and reports)."""
        named = ["centring"] if self.centring.enabled else []
        if self.space is not None:
            named.append(f"rerank:{self.space.name}")
            named += ["hubness"] if self.space.hubs is not None else []
            named += ["colour"] if self.layout.colour_weight else []
        named += ["detail"] if self.detail.enabled else []
        named += ["new_products_first"] if self.new_products.applies else []
        return [*named, f"confidence:{self.decision.origin}"]

    @property
    def decision(self) -> Confidence:
        return self.confidence or self.policy.prior()


@dataclass(frozen=True)
class Ranking:
    status: MatchStatus
    hits: list[ProductHit]
    confidence: float = 0.0
    """Probability that the first product is right (`stages/confidence.py`)."""
    confidence_origin: str = "prior"
    evidence: tuple[float, ...] = ()
    """The scores the decision read (the first product's, then the best other's): enough to
    decide again with another confidence (`bench accuracy`'s judged photos as labels)."""
    doubted: bool = False
    """Not `matched` whatever the confidence: a new look-alike is as close on catalog images
    (`stages/new_products.py`)."""

    def ranked_products(self) -> list[RankedProduct]:
        return [
            RankedProduct(
                rank=rank,
                product_id=hit.product_id,
                sku=hit.sku,
                score=round(float(hit.score), 6),
                image_id=whole_image_id(hit.image_id),
                source=hit.source,
                name=hit.name,
                image=S3Object.model_validate(hit.uri) if hit.uri else None,
            )
            for rank, hit in enumerate(self.hits, start=1)
        ]


@dataclass(frozen=True)
class Prototype:
    image: np.ndarray  # in the space
    colour: np.ndarray  # unit mean colour descriptor; zeros where no image showed colour
    hub: float = 0.0  # taken off its score in the space
    pieces: np.ndarray | None = None
    """The pieces cut from a set's catalog images, in the space (rows; `MODEL__CATALOG_PARTS`):
    each competes on its own, as in the search, instead of joining the mean."""

    def similarity(self, projected_scan: np.ndarray) -> float:
        """The scan's cosine with the prototype, or with its closest piece where higher."""
        score = float(projected_scan @ self.image)
        if self.pieces is not None and len(self.pieces):
            score = max(score, float((self.pieces @ projected_scan).max()))
        return score


class Prototypes:
    """Each product's prototype in a space, read from the index and kept for `ttl` seconds
    (other workers may change a product); `forget` drops a product's at once. Thread-safe."""

    def __init__(self, index: VectorIndex, layout: VectorLayout, ttl: float = 60.0) -> None:
        self.index, self.layout, self.ttl = index, layout, ttl
        self._cached: dict[tuple[str, bool, int], tuple[Prototype, float]] = {}
        self._lock = threading.Lock()

    def get(self, product_id: str, space: RerankSpace, catalog_only: bool) -> Prototype:
        key, now = (product_id, catalog_only, id(space)), time.monotonic()
        with self._lock:
            cached = self._cached.get(key)
        if cached is not None and now - cached[1] < self.ttl:
            return cached[0]
        references = self.index.references(product_id)
        if catalog_only and (references.sources == SOURCE_CATALOG).any():
            references = references.subset(references.sources == SOURCE_CATALOG)
        colours = self.layout.colour_part(references.vectors)
        shown = colours[colours.any(axis=1)]
        image_refs = image_references(references, self.layout)
        pieces = image_refs.pieces()
        cut = bool(pieces.any() and not pieces.all())  # a set's pieces beside its images
        image = space.prototype(image_refs.subset(~pieces) if cut else image_refs)
        prototype = Prototype(
            image=image,
            colour=unit_rows(shown.mean(axis=0)) if len(shown) else np.zeros(colours.shape[1]),
            hub=float(space.hub_penalty(image[None, :])[0]),
            pieces=space.projected(image_refs.subset(pieces)) if cut else None,
        )
        with self._lock:
            self._cached[key] = (prototype, now)
        return prototype

    def forget(self, product_ids=None) -> None:
        """Drop cached prototypes: of these products, or all (a new snapshot)."""
        with self._lock:
            if product_ids is None:
                self._cached.clear()
            else:
                gone = set(product_ids)
                self._cached = {k: v for k, v in self._cached.items() if k[0] not in gone}


def rank(
    snapshot: Snapshot,
    index: VectorIndex,
    prototypes: Prototypes,
    vectors: np.ndarray,
    top_k: int,
    category: str | None = None,
    details: ScanDetails | None = None,
) -> list[Ranking]:
    """Rank products for scan vectors (one more is looked at, for the margin); with
    `details` (one per scan), the detail stage acts."""
    queries = snapshot.centring.centre(vectors)
    source = snapshot.centring.searchable_source()
    if not snapshot.detail.enabled:
        details = None
    rankings = _ranked(snapshot, snapshot.space, index, prototypes, vectors, queries, top_k,
                       category, source, details)  # fmt: skip
    if source is None and snapshot.new_products.applies:
        rankings = _new_products_first(
            snapshot, index, prototypes, vectors, queries, rankings, top_k, category, details
        )
    return rankings


def _ranked(
    snapshot: Snapshot,
    space: RerankSpace | None,
    index: VectorIndex,
    prototypes: Prototypes,
    vectors: np.ndarray,
    queries: np.ndarray,
    top_k: int,
    category: str | None,
    source: str | None,
    details: ScanDetails | None = None,
) -> list[Ranking]:
    """Stages 1, 2, 3 and 5: search, correct, re-rank in `space`, re-rank by detail, decide.
    Where the search keeps to catalog images (stage 4's day-one ranking, or any ranking before
    the photo domain's mean is known, when confirmations wait for the next refit), so do the
    prototypes."""
    wanted = top_k + 1
    if space is not None:
        wanted = max(wanted, snapshot.rerank_candidates)
    if details is not None:
        wanted = max(wanted, snapshot.detail.candidates)
    catalog_only = source == SOURCE_CATALOG
    rankings, decision = [], snapshot.decision
    found = index.search(queries, wanted, category, source)
    for n, (vector, query, hits) in enumerate(zip(vectors, queries, found, strict=True)):
        hits = snapshot.centring.correct(query, hits)
        if space is not None and hits:
            hits = _rescored(snapshot, space, prototypes, vector, hits, catalog_only)
        hits = hits[: max(top_k + 1, snapshot.detail.candidates)]
        decided = [hit.score for hit in hits[: top_k + 1]]
        if details is not None:
            reranked = snapshot.detail.rerank(hits, details.scans[n], details.references)
            decided = snapshot.detail.decision_scores(hits, reranked)
            hits = reranked
        hits = hits[: top_k + 1]
        status, confidence = decision.assess(decided)
        rankings.append(
            Ranking(status, hits[:top_k], confidence, decision.origin, tuple(map(float, decided)))
        )
    return rankings


def _rescored(
    snapshot: Snapshot,
    space: RerankSpace,
    prototypes: Prototypes,
    vector: np.ndarray,
    hits: list[ProductHit],
    catalog_only: bool,
) -> list[ProductHit]:
    """Stage 2: a scan's candidates (`vector`: as embedded) re-scored by their prototypes in
    `space`, less their hub penalty, plus the colour term."""
    layout = snapshot.layout
    projected = space.project_scans(layout.image_part(vector[None, :]))[0]
    colour = layout.colour_part(vector[None, :])[0]
    rescored = []
    for hit in hits:
        prototype = prototypes.get(hit.product_id, space, catalog_only)
        score = space.score_scale * (prototype.similarity(projected) - prototype.hub)
        score = snapshot.colour.combine(score, colour, prototype.colour)
        rescored.append(replace(hit, score=score))
    return sorted(rescored, key=lambda hit: (-hit.score, hit.product_id))


def _new_products_first(
    snapshot: Snapshot,
    index: VectorIndex,
    prototypes: Prototypes,
    vectors: np.ndarray,
    queries: np.ndarray,
    rankings: list[Ranking],
    top_k: int,
    category: str | None,
    details: ScanDetails | None,
) -> list[Ranking]:
    """Stage 4: where the closest catalog product has no confirmed photo yet, the scan's
    ranking against catalog images, in the whitened space, replaces its ranking; where a
    product without one is about as close there as the answer, the answer is refused."""
    day_one = _ranked(snapshot, snapshot.whitening, index, prototypes, vectors, queries, top_k,
                      category, SOURCE_CATALOG, details)  # fmt: skip
    # a confirmed photo this similar shows the very item (a corrected scan photographed again)
    closest_photos = index.search(vectors, 1, category, SOURCE_CONFIRMED_SCAN)
    stage, routed = snapshot.new_products, []
    for ranking, catalog_ranking, photos in zip(rankings, day_one, closest_photos, strict=True):
        closest = catalog_ranking.hits[0].product_id if catalog_ranking.hits else None
        same_item = stage.shows_same_item(photos[0].score if photos else None)
        if stage.routes(closest, same_item):
            routed.append(catalog_ranking)
            continue
        catalog_scores = [(hit.product_id, hit.score) for hit in catalog_ranking.hits]
        if ranking.hits and stage.doubts(ranking.hits[0].product_id, catalog_scores, same_item):
            ranking = replace(ranking, status=MatchStatus.no_confident_match, doubted=True)
        routed.append(ranking)
    return routed
