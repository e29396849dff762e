"""The same index behaviour on both back ends: the embedded Qdrant engine (qdrant-edge-py)
and the server code path (qdrant-client, in its local mode as the server's stand-in)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from worker.index import (
    SOURCE_CATALOG,
    SOURCE_CONFIRMED_SCAN,
    ReferenceImage,
    ScanRecord,
    open_index,
)
from worker.index.edge import EdgeIndex, IndexLockedError
from worker.index.shard_guard import IndexClosedError, ShardGuard
from worker.settings import IndexSettings

DIM = 16


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def basis(i: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[i] = 1.0
    if noise:
        vector += np.random.default_rng(seed).normal(scale=noise, size=DIM).astype(np.float32)
    return unit(vector)


def ref(product: str, image: str, vector, category=None, source=SOURCE_CATALOG, sku=None):
    return ReferenceImage(
        product_id=product,
        image_id=image,
        sku=sku or f"SKU-{product}",
        vector=vector,
        source=source,
        category=category,
        uri=f"s3://cat/{product}/{image}.jpg",
    )


@pytest.fixture(params=["edge", "qdrant-local", "memory"])
def index(request, tmp_path: Path):
    if request.param == "memory":  # the stand-in the matching tests use: held to the same
        from worker.index.memory import InMemoryIndex

        yield InMemoryIndex("test-model", DIM)
        return
    if request.param == "edge":
        settings = IndexSettings(backend="edge", path=tmp_path / "index")
    else:
        settings = IndexSettings(backend="qdrant", url=":memory:")
    opened = open_index(settings, "test-model", DIM)
    yield opened
    opened.close()


def test_upsert_and_grouped_search_returns_each_product_once(index):
    index.upsert(
        [
            ref("ring-a", "front", basis(0)),
            ref("ring-a", "side", basis(1)),
            ref("ring-b", "front", basis(2)),
            ref("ring-c", "front", basis(3)),
        ]
    )
    assert index.count() == 4
    query = unit(basis(0) * 0.9 + basis(1) * 0.8 + basis(2) * 0.3)
    [hits] = index.search(query[None, :], top_k=3)
    assert [h.product_id for h in hits] == ["ring-a", "ring-b", "ring-c"]
    assert hits[0].image_id == "front" and hits[0].sku == "SKU-ring-a"
    assert hits[0].score == pytest.approx(float(query @ basis(0)), abs=1e-5)


def test_search_answers_several_queries_in_one_call(index):
    index.upsert([ref(f"p{i}", "front", basis(i)) for i in range(5)])
    queries = np.stack([basis(3, 0.1, 1), basis(1, 0.1, 2)])
    found = index.search(queries, top_k=1)
    assert [hits[0].product_id for hits in found] == ["p3", "p1"]


def test_a_product_with_many_images_does_not_crowd_out_others(index):
    # 40 near-identical images of one product sit closest to the query
    index.upsert(
        [ref("crowd", f"img{i}", basis(0, 0.01, i)) for i in range(40)]
        + [
            ref("other", "front", unit(basis(0) * 0.5 + basis(1))),
            ref("third", "front", unit(basis(0) * 0.2 + basis(2))),
        ]
    )
    [hits] = index.search(basis(0)[None, :], top_k=3)
    assert [h.product_id for h in hits] == ["crowd", "other", "third"]


def test_redelivered_upsert_creates_no_duplicate(index):
    images = [ref("p1", "front", basis(0)), ref("p1", "back", basis(1))]
    index.upsert(images)
    index.upsert(images)
    assert index.count() == 2
    assert sorted(i.image_id for i in index.product_images("p1")) == ["back", "front"]


def test_category_filter_restricts_candidates(index):
    index.upsert(
        [
            ref("ring", "front", basis(0), category="rings"),
            ref("pendant", "front", basis(0, 0.05, 3), category="pendants"),
        ]
    )
    [unfiltered] = index.search(basis(0)[None, :], top_k=2)
    [rings] = index.search(basis(0, 0.05, 3)[None, :], top_k=2, category="rings")
    [none] = index.search(basis(0)[None, :], top_k=2, category="earrings")
    assert {h.product_id for h in unfiltered} == {"ring", "pendant"}
    assert [h.product_id for h in rings] == ["ring"]
    assert none == []


def test_delete_product_removes_all_its_images(index):
    index.upsert(
        [
            ref("gone", "front", basis(0)),
            ref("gone", "side", basis(1)),
            ref("gone", "scan:s1", basis(2), source=SOURCE_CONFIRMED_SCAN),
            ref("kept", "front", basis(3)),
        ]
    )
    index.delete_product("gone")
    assert index.count() == 1
    assert index.product_images("gone") == []
    [hits] = index.search(basis(0)[None, :], top_k=5)
    assert [h.product_id for h in hits] == ["kept"]


def test_delete_images_and_update_product_info(index):
    index.upsert([ref("p1", "front", basis(0)), ref("p1", "back", basis(1))])
    index.delete_images("p1", ["back"])
    index.set_product_info("p1", "NEW-SKU", "Ring", "rings")
    stored = index.product_images("p1")
    assert [(s.image_id, s.sku, s.category) for s in stored] == [("front", "NEW-SKU", "rings")]
    [hits] = index.search(basis(0)[None, :], top_k=1, category="rings")
    assert hits[0].sku == "NEW-SKU"


def test_empty_index_answers_with_no_hits(index):
    assert index.search(basis(0)[None, :], top_k=3) == [[]]


def test_scan_memory_remember_recall_forget(index):
    record = ScanRecord(
        scan_id="scan-1",
        vector=basis(4),
        image_uri="s3://scans/1.jpg",
        created_at=1000.0,
        result_json='{"x": 1}',
        extra={"a": "b"},
    )
    index.remember_scan(record)
    index.remember_scan(ScanRecord("scan-2", basis(5), "s3://scans/2.jpg", 2000.0))
    np.testing.assert_allclose(index.scan_vectors(1), basis(5)[None], atol=1e-6)  # the latest
    np.testing.assert_allclose(index.scan_vectors(9), np.stack([basis(4), basis(5)]), atol=1e-6)
    recalled = index.recall_scan("scan-1")
    assert recalled is not None
    assert recalled.image_uri == "s3://scans/1.jpg" and recalled.result_json == '{"x": 1}'
    assert recalled.extra == {"a": "b"}
    np.testing.assert_allclose(recalled.vector, basis(4), atol=1e-6)
    assert index.recall_scan("scan-404") is None
    index.forget_scans_before(1500.0)
    assert index.recall_scan("scan-1") is None
    assert index.recall_scan("scan-2") is not None
    assert index.count() == 0  # scans are not reference images


def test_models_never_mix(tmp_path: Path):
    settings = IndexSettings(backend="edge", path=tmp_path)
    a = open_index(settings, "model-a", DIM)
    b = open_index(settings, "model-b", DIM)
    a.upsert([ref("p1", "front", basis(0))])
    assert (a.count(), b.count()) == (1, 0)
    a.close()
    b.close()


@pytest.mark.parametrize("backend", ["edge", "qdrant-local"])
def test_what_learning_reads_does_not_depend_on_the_model_id(tmp_path: Path, backend: str):
    """Point ids carry the model id, and the index keeps points in their order; references
    and scans are read back in one order whatever the model is called (by product and image;
    by the time of the scan), so a renamed model, or a new version, learns from the same
    draws."""
    reads = []
    for model_id in ("model-a", "model-b", "another-name-v1"):
        if backend == "edge":
            opened = open_index(IndexSettings(backend="edge", path=tmp_path), model_id, DIM)
        else:
            opened = open_index(IndexSettings(backend="qdrant", url=":memory:"), model_id, DIM)
        opened.upsert(
            [ref(f"p{n % 5}", f"img-{n}", basis(n % DIM, noise=0.1, seed=n)) for n in range(40)]
        )
        for n in range(30):
            opened.remember_scan(ScanRecord(f"scan-{n}", basis(n % DIM), "s3://s/x.jpg", 100.0 + n))
        refs = opened.references()
        reads.append((refs.product_ids.tolist(), refs.image_ids.tolist(), opened.scan_vectors(100)))
        # fewer than it holds: the latest, oldest first
        latest = np.stack([basis(n % DIM) for n in range(25, 30)])
        np.testing.assert_array_equal(opened.scan_vectors(5), latest)
        opened.close()
    for product_ids, image_ids, scans in reads[1:]:
        assert (product_ids, image_ids) == (reads[0][0], reads[0][1])
        np.testing.assert_array_equal(scans, reads[0][2])
    np.testing.assert_array_equal(reads[0][2][:3], np.stack([basis(0), basis(1), basis(2)]))


def test_embedded_index_persists_and_is_owned_by_one_opener(tmp_path: Path):
    settings = IndexSettings(backend="edge", path=tmp_path)
    index = EdgeIndex(settings, "m", DIM)
    index.upsert([ref("p1", "front", basis(0))])
    with pytest.raises(IndexLockedError, match="in use"):
        EdgeIndex(settings, "m", DIM)
    index.close()
    reopened = EdgeIndex(settings, "m", DIM)
    assert reopened.count() == 1
    assert reopened.search(basis(0)[None, :], 1)[0][0].product_id == "p1"
    reopened.close()


def test_closing_waits_for_the_calls_in_progress_and_refuses_later_ones():
    guard = ShardGuard()
    inside, leave, order = threading.Event(), threading.Event(), []

    def long_call() -> None:
        with guard.call():
            inside.set()
            leave.wait(timeout=10)
            order.append("call ended")

    thread = threading.Thread(target=long_call)
    thread.start()
    assert inside.wait(timeout=10)
    closed = []
    closing = threading.Thread(target=lambda: closed.append(guard.close(300)), daemon=True)
    closing.start()
    threading.Timer(0.2, leave.set).start()
    closing.join(timeout=30)  # woken by the call's end, long before its timeout
    assert closed == [True]
    order.append("closed")
    thread.join()
    assert order == ["call ended", "closed"]
    with pytest.raises(IndexClosedError), guard.call():
        pass


def test_closing_gives_up_on_a_call_that_does_not_end_and_a_failed_call_ends():
    guard = ShardGuard()
    stuck, leave = threading.Event(), threading.Event()

    def failing_call() -> None:
        with contextlib.suppress(RuntimeError), guard.call():
            stuck.set()
            leave.wait(timeout=10)
            raise RuntimeError("the engine failed mid-call")

    thread = threading.Thread(target=failing_call)
    thread.start()
    assert stuck.wait(timeout=10)
    assert guard.close(timeout=0.1) is False  # still in the call: the caller is told
    leave.set()
    thread.join(timeout=10)
    assert guard.close(timeout=10) is True  # the failed call counted as ended


def _read_until_closed(index: EdgeIndex, ended_with: list[BaseException]) -> None:
    try:
        while True:
            index.references()
    except BaseException as error:  # what ended it is the point
        ended_with.append(error)


def test_the_embedded_index_closes_while_another_thread_reads_it(tmp_path: Path):
    """A worker stopping while a refit reads its index: the engine refused to close a shard in
    use ("Already borrowed", about one close in seven here) and the worker exited 1."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        index = EdgeIndex(IndexSettings(backend="edge", path=tmp_path / str(trial)), "m", 256)
        vectors = rng.normal(size=(300, 256)).astype(np.float32)
        index.upsert([ref(f"p{n % 50}", f"i{n}", v) for n, v in enumerate(vectors)])
        ended_with: list[BaseException] = []
        reader = threading.Thread(target=_read_until_closed, args=(index, ended_with))
        reader.start()
        time.sleep(rng.uniform(0, 0.05))
        index.close()  # raised RuntimeError("Already borrowed") before the guard
        reader.join(timeout=30)
        assert [type(error) for error in ended_with] == [IndexClosedError]


def test_embedded_index_uses_hnsw_beyond_the_exact_search_size(tmp_path: Path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    settings = IndexSettings(backend="edge", path=tmp_path, exact_search_max_points=100)
    index = EdgeIndex(settings, "m", DIM)
    index.upsert([ref(f"p{i}", "front", v) for i, v in enumerate(vectors)])
    index.optimize()
    found = index.search(vectors[:20], top_k=1)
    assert [hits[0].product_id for hits in found] == [f"p{i}" for i in range(20)]
    index.close()


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_the_embedded_index_searches_exactly_up_to_its_size_then_by_a_graph_built_as_it_grows(
    tmp_path: Path, quantization: str
):
    settings = IndexSettings(
        backend="edge", path=tmp_path, exact_search_max_points=3, hnsw_ef=40,
        quantization=quantization,
    )  # fmt: skip
    index = EdgeIndex(settings, "m", DIM)
    try:
        index.upsert([ref(f"p{i}", "front", basis(i)) for i in range(3)])
        assert index.search_params().exact and not index.needs_optimizing()  # 3 of 3
        index.upsert([ref("p3", "front", basis(3))])
        params = index.search_params()
        assert (params.exact, params.hnsw_ef) == (False, 40)
        if quantization == "int8":  # the quantized vectors' order checked on the originals
            assert (params.quantization.rescore, params.quantization.oversampling) == (True, 2)
        else:
            assert params.quantization is None
        assert index.needs_optimizing()
        index.optimize()
        assert not index.needs_optimizing()  # built at 4 images: due again from 4.4
        index.upsert([ref("p4", "front", basis(4))])
        assert index.needs_optimizing()
        index.configure_search(hnsw_ef=12)  # what the scale benchmark sweeps
        assert (index.search_params().exact, index.search_params().hnsw_ef) == (False, 12)
        index.configure_search(exact_search_max_points=5)
        assert index.search_params().exact
        found = index.search(np.stack([basis(i) for i in range(5)]), top_k=1)
        assert [hits[0].product_id for hits in found] == [f"p{i}" for i in range(5)]
    finally:
        index.close()


def test_a_worker_refuses_a_model_that_is_not_the_one_in_service(tmp_path, tiny_model_dir):
    from tests.conftest import make_settings
    from worker.index import open_index
    from worker.service.app import ModelNotCurrent, ensure_model_is_current
    from worker.vision.embedder import model_id_for

    serving = make_settings(tmp_path, tiny_model_dir)
    other_views = make_settings(tmp_path, tiny_model_dir, model={"scan_crops": [1.0, 0.5]})
    assert model_id_for(serving.model) != model_id_for(other_views.model)  # views name it
    first = open_index(serving.index, model_id_for(serving.model), 8)
    ensure_model_is_current(serving, first)  # the first model in service becomes current
    first.close()
    second = open_index(other_views.index, model_id_for(other_views.model), 8)
    try:
        with pytest.raises(ModelNotCurrent, match="reindex"):
            ensure_model_is_current(other_views, second)
        told = other_views.model_copy(
            update={"index": other_views.index.model_copy(update={"serve_non_current_model": True})}
        )
        ensure_model_is_current(told, second)
    finally:
        second.close()


def test_source_filter_keeps_a_products_catalog_image_behind_its_confirmed_photo(index):
    index.upsert(
        [
            ref("p1", "front", basis(1)),
            ref("p1", "scan:s1", basis(0), source=SOURCE_CONFIRMED_SCAN),
            ref("p2", "front", basis(0, 0.3, 1)),
        ]
    )
    [everything] = index.search(basis(0)[None, :], top_k=2)
    [catalog] = index.search(basis(0)[None, :], top_k=2, source="catalog")
    assert [h.image_id for h in everything][:1] == ["scan:s1"]
    assert {h.source for h in catalog} == {"catalog"}
    assert [h.product_id for h in catalog] == ["p2", "p1"]  # p1 by its catalog image


def test_reference_sets_join_row_by_row_a_part_without_uris_giving_none():
    from worker.index.base import ReferenceSet

    with_uris = ReferenceSet(
        np.ones((2, 3), np.float32),
        np.array(["a", "b"], dtype=object),
        np.array(["catalog", "catalog"], dtype=object),
        np.array(["s3://x/a", "s3://x/b"], dtype=object),
        np.array(["ia", "ib"], dtype=object),
    )
    bare = ReferenceSet(
        np.zeros((1, 3), np.float32),
        np.array(["c"], dtype=object),
        np.array(["confirmed_scan"], dtype=object),
    )
    joined = ReferenceSet.joined([with_uris, bare])
    assert joined.vectors.shape == (3, 3) and joined.vectors[2].sum() == 0
    assert list(joined.product_ids) == ["a", "b", "c"]
    assert list(joined.uris) == ["s3://x/a", "s3://x/b", None]
    assert list(joined.image_ids) == ["ia", "ib", None]


def test_every_product_state_is_read_back_tombstones_included(index):
    """What a reindex carries to the new index; more states than one request takes."""
    from worker.index import ProductState

    states = [ProductState(f"p{n}", n, deleted=n % 7 == 0) for n in range(2500)]
    index.set_product_states(states)
    index.set_product_state(ProductState("p1", 9))
    read = {state.product_id: state for state in index.all_product_states()}
    assert len(read) == 2500 and read["p1"] == ProductState("p1", 9)
    assert read["p2499"] == states[2499] and read["p7"].deleted


def test_a_paged_scroll_reads_every_page_or_only_the_pages_a_limit_needs():
    from worker.index.base import collect_pages

    records = list(range(10))
    asked: list[object] = []

    def fetch_page(offset):
        asked.append(offset)
        start = offset or 0
        end = min(start + 3, len(records))
        return records[start:end], (end if end < len(records) else None)

    assert collect_pages(fetch_page, None) == records and asked == [None, 3, 6, 9]
    asked.clear()
    assert collect_pages(fetch_page, 4) == [0, 1, 2, 3] and asked == [None, 3]
    asked.clear()
    assert collect_pages(fetch_page, 3) == [0, 1, 2] and asked == [None]


def test_the_references_learning_reads_carry_their_vectors(index):
    index.upsert([ref("a", "front", basis(0)), ref("b", "front", basis(1, noise=0.1))])
    read = index.references()
    by_product = dict(zip(read.product_ids, read.vectors, strict=True))
    np.testing.assert_allclose(by_product["a"], basis(0), atol=1e-6)
    np.testing.assert_allclose(by_product["b"], basis(1, noise=0.1), atol=1e-6)
    [only_b] = index.references("b").vectors
    np.testing.assert_allclose(only_b, basis(1, noise=0.1), atol=1e-6)


# --- the server's code path: its own rules ----------------------------------------------


@pytest.mark.parametrize(
    "status, transient", [(400, False), (499, False), (500, True), (503, True), (None, True)]
)
def test_a_server_that_fails_is_transient_and_a_request_it_refuses_is_not(status, transient):
    import httpx
    from qdrant_client.http.exceptions import UnexpectedResponse

    from worker.errors import TransientError
    from worker.index.server import _transient_on_outage

    @_transient_on_outage
    def call() -> None:
        raise UnexpectedResponse(status, "reason", b"", httpx.Headers())

    with pytest.raises(TransientError if transient else UnexpectedResponse):
        call()


def test_the_server_index_url_names_memory_or_a_folder(tmp_path: Path):
    from worker.index.server import open_client

    folder = tmp_path / "qdrant"
    for url in (None, ":memory:", str(folder)):
        client = open_client(IndexSettings(backend="qdrant", url=url))
        client.create_collection("c", vectors_config={"size": 2, "distance": "Cosine"})
        assert client.collection_exists("c")
        client.close()
    assert any(folder.iterdir())  # the folder's client keeps its collection there


def test_a_qdrant_servers_indexes_and_the_one_in_service_are_read_from_it(tmp_path: Path):
    """What `reindex`, `model promote` and `backup` ask first, on the server back end (its
    code path in qdrant-client's folder mode, which one client at a time may open: each
    question closes its own)."""
    from worker.index import current_index_model, stored_dimension
    from worker.index.server import QdrantServerIndex

    settings = IndexSettings(backend="qdrant", url=str(tmp_path / "qdrant"))
    assert stored_dimension(settings, "m") is None and current_index_model(settings) is None
    QdrantServerIndex(settings, "m", DIM).close()  # the first index goes into service
    assert stored_dimension(settings, "m") == DIM and current_index_model(settings) == "m"
    index = QdrantServerIndex(settings, "n", DIM + 1)
    index.close()
    assert stored_dimension(settings, "n") == DIM + 1 and current_index_model(settings) == "m"
    index = QdrantServerIndex(settings, "n", DIM + 1)
    index.make_current()
    index.close()
    assert current_index_model(settings) == "n" and stored_dimension(settings, "o") is None


def test_each_write_hold_is_its_holders_own_and_one_left_behind_lapses(monkeypatch):
    from qdrant_client import QdrantClient

    from worker.index import server as server_module
    from worker.index.server import WRITE_HOLD_SECONDS, QdrantServerIndex

    settings = IndexSettings(backend="qdrant", url=":memory:")
    index = QdrantServerIndex(settings, "m", DIM, client=QdrantClient(location=":memory:"))
    now = [1_000_000.0]
    monkeypatch.setattr(server_module.time, "time", lambda: now[0])
    first, second = index.hold_writes(), index.hold_writes()
    index.release_writes(first)
    assert [name for name, _ in index._holds()] == [second] and index.writes_held()
    index.release_writes(second)
    assert not index.writes_held()
    index.hold_writes()  # its holder dies without releasing it
    now[0] += WRITE_HOLD_SECONDS
    assert not index.writes_held()  # lapsed
    index.release_writes(index.hold_writes())  # a release takes the lapsed one away too
    assert index._holds() == []
    index.close()


def test_a_products_state_is_read_back_alone(index):
    from worker.index import ProductState

    index.set_product_state(ProductState("p1", 3))
    index.set_product_state(ProductState("p2", 5, deleted=True))
    assert index.product_state("p1") == ProductState("p1", 3)
    assert index.product_state("p2") == ProductState("p2", 5, deleted=True)
    assert index.product_state("never-told") is None
