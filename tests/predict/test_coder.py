"""ChunkTilesCoder: a chunk's exact bytes where a runner encodes it, and its size from its
arrays' shapes where the runner's output counters only estimate it."""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
import pytest
from apache_beam import coders
from apache_beam.runners.pipeline_context import PipelineContext
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.predict import ChunkTiles, PredictConfig, plan_predict
from pipelines.predict import coder as chunk_coder
from pipelines.predict.coder import ChunkTilesCoder
from tests.predict import test_predict as pr
from tests.scenes import make_predict_scene

KEYED = tuple[tuple[int, str], ChunkTiles]


def _tiles(image: np.ndarray | None) -> ChunkTiles:
    rng = np.random.default_rng(3)
    return ChunkTiles(2, "32645_r5375_c250", {"epsg": 32645, "pixel_size": 10.0,
                                              "chunk_size": 64, "halo": 16},
                      b"\x01\x03\x00wkb", "sig-1", rng.integers(0, 64, (7, 2)),
                      rng.uniform(size=(64, 64)) > 0.3, 32, image)


def _assert_same(got: ChunkTiles, sent: ChunkTiles) -> None:
    assert isinstance(got, ChunkTiles)
    assert (got.job, got.key, got.spec, got.region_wkb, got.signature, got.size) == (
        sent.job, sent.key, sent.spec, sent.region_wkb, sent.signature, sent.size)
    for name in ("origins", "valid", "image"):
        a, b = getattr(got, name), getattr(sent, name)
        if b is None:
            assert a is None, name
            continue
        assert (a.dtype, a.shape) == (b.dtype, b.shape), name
        np.testing.assert_array_equal(a, b)
        assert a.flags.writeable and not np.shares_memory(a, b), name


def test_a_chunk_round_trips_through_the_coder_bit_for_bit():
    rng = np.random.default_rng(4)
    image = rng.uniform(-1, 1, (96, 96, 3)).astype(np.float32)
    image[0, 0, 0] = np.nan  # raw bytes: NaN and signed zeros survive as they are
    image[0, 0, 1] = -0.0
    coder = ChunkTilesCoder()
    cases = [_tiles(image),
             _tiles(np.asfortranarray(image)),  # not C-contiguous
             _tiles(image[::2, ::3]),  # a strided view
             _tiles(image.astype(">f8")),  # another dtype and byte order
             _tiles(None)]  # without pixels
    for sent in cases:
        data = coder.encode(sent)
        assert coder.estimate_size(sent) == len(data)  # exact, from the shapes
        got = coder.decode(data)
        _assert_same(got, sent)
        if sent.image is not None:
            assert got.image.tobytes() == np.ascontiguousarray(sent.image).tobytes()
    empty = dataclasses.replace(cases[0], origins=np.zeros((0, 2), np.int64))
    _assert_same(coder.decode(coder.encode(empty)), empty)
    data = coder.encode(cases[0])
    for broken in (data[:-1], data + b"\x00"):
        with pytest.raises(ValueError):
            coder.decode(broken)
    with pytest.raises(TypeError, match="arrays of numbers"):
        coder.encode(_tiles(np.empty((2, 2, 1), object)))


def test_a_typed_pcollection_gets_the_coder_which_sizes_a_chunk_without_copying_it(
        monkeypatch):
    """What a runner's output counter does with a sampled element: estimate its size with
    the PCollection's coder (windowed). It must not copy the pixels (nor pickle them)."""
    chunk_coder.register()
    keyed = coders.registry.get_coder(beam.typehints.native_type_compatibility
                                      .convert_to_beam_type(KEYED))
    assert isinstance(keyed, coders.TupleCoder)
    assert isinstance(keyed.coders()[1], ChunkTilesCoder)
    element = ((2, "32645_r5375_c250"),
               _tiles(np.ones((2048, 2048, 8), np.float32)))  # 128 MiB of pixels
    assert keyed.decode(keyed.encode(element))[0] == element[0]
    _assert_same(keyed.decode(keyed.encode(element))[1], element[1])
    windowed = coders.WindowedValueCoder(keyed).get_impl()
    value = WindowedValue(element, 0, [GlobalWindow()])
    encoded = len(windowed.encode_nested(value))

    def refuse(*args, **kwargs):
        raise AssertionError("the size estimate copied the pixels")

    monkeypatch.setattr(chunk_coder, "_array_parts", refuse)
    monkeypatch.setattr("pickle.dumps", refuse)
    size, observables = windowed.get_estimated_size_and_observables(value, nested=True)
    assert observables == [] and size == encoded


# ----------------------------------------------------------------------------- the sweep
@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    return make_predict_scene(tmp_path_factory.mktemp("coder_scene"))


def _component_coders(coder: coders.Coder) -> list[coders.Coder]:
    out = [coder]
    for c in coder._get_component_coders():
        out += _component_coders(c)
    if isinstance(coder, coders.ListCoder | coders.IterableCoder):
        out += _component_coders(coder._elem_coder)
    return out


def test_the_sweep_types_the_pcollections_that_carry_chunks(small_scene, tmp_path):
    """Up to RunInference's model call, the chunk's PCollections have ChunkTilesCoder;
    which steps still have Beam's pickling coder is pinned here too."""
    from pipelines.predict.pipeline import build_pipeline

    plan, elements = plan_predict(PredictConfig(
        model=small_scene["thr"], source={"kind": "geotiff",
                                          "images": [str(small_scene["dir"] / "s2.tif")]},
        out=str(tmp_path), aoi=str(small_scene["dir"] / "aoi.geojson"), start=pr.START,
        end=pr.END, chunk_size=64))
    p = beam.Pipeline()
    build_pipeline(p, plan, elements)
    proto = p.to_runner_api()
    context = PipelineContext(proto.components)
    typed, untyped = set(), set()
    for t in proto.components.transforms.values():
        if t.subtransforms or not t.unique_name.startswith(("Prepare/", "Predict/")):
            continue
        for pc in t.outputs.values():
            coder = context.coders.get_by_id(proto.components.pcollections[pc].coder_id)
            kinds = {type(c) for c in _component_coders(coder)}
            (typed if ChunkTilesCoder in kinds else untyped).add(t.unique_name)
    assert typed == {"Prepare/Split/Only_tiles",
                     "Predict/Infer/BatchElements/ParDo(_GlobalWindowsBatchingDoFn)"}
    # the reader's (tag, value) pairs mix chunks with records (Beam has no union coder);
    # RunInference's results hold no pixels (see the handler)
    assert {"Prepare/Read", "Prepare/Split/CheckTags",
            "Predict/Infer/BeamML_RunInference"} <= untyped


def test_split_tags_types_only_the_tags_it_is_given():
    from apache_beam.typehints import Any

    from pipelines.transforms.tagged import SplitTags

    with pytest.raises(ValueError, match=r"types for \['c'\]"):
        SplitTags("a", "b", types={"c": int})
    p = beam.Pipeline()
    out = (p | beam.Create([("a", 1), ("b", "x")])
           | SplitTags("a", "b", types={"a": int}))
    assert out["a"].element_type is int
    assert out["b"].element_type == Any
