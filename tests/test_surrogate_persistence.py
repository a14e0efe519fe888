"""One persistence stack for both surrogates (costmodels.persistence): one warning class, strict
reading that leaves no trace of a bad file in the process, atomic saves."""
import json
import warnings

import numpy as np
import pytest

from costmodels import arch_surrogate, persistence, surrogate
from costmodels.arch_surrogate import ArchLatencySurrogate
from costmodels.surrogate import OpLatencySurrogate, load_surrogate
from device_tables import OpKey
from spaces.errors import HwcostError
from spaces.nb201_arch import all_archs

KEYS = [OpKey("darts", "sep_conv_3x3", 1, C, C, H, H, 1) for C in (8, 16, 24) for H in (8, 16)]
LATENCY = [0.01 + 1e-5 * k.c_in * k.h for k in KEYS]
ARCHS = [a.to_str() if hasattr(a, "to_str") else str(a) for a in all_archs()[:30]]


@pytest.fixture()
def fresh_cache(monkeypatch):
    """An empty process-wide feature cache, so a file that wrote into it would show."""
    monkeypatch.setattr(surrogate, "_FEATURES", {})
    return surrogate._FEATURES


def _op_file(tmp_path):
    path = tmp_path / "op.json"
    OpLatencySurrogate(family="linear").fit(KEYS, LATENCY).save(path)
    return path


def _arch():
    y = np.arange(len(ARCHS), dtype=float) % 7 + 1.0
    return ArchLatencySurrogate(features="counts", model="nnls").fit(ARCHS, y)


def test_one_warning_class_catches_both_surrogates(tmp_path):
    assert surrogate.SurrogateVersionWarning is arch_surrogate.SurrogateVersionWarning \
        is persistence.SurrogateVersionWarning
    op_doc = json.loads(_op_file(tmp_path).read_text())
    arch_doc = json.loads(_arch().to_json())
    for doc, load in ((op_doc, OpLatencySurrogate.from_json), (arch_doc, ArchLatencySurrogate.from_json)):
        numpy_major = doc["versions"]["numpy"].split(".")[0]
        doc["versions"]["numpy"] = f"{numpy_major}.9999"
        with pytest.warns(persistence.SurrogateVersionWarning, match="numpy"):
            load(json.dumps(doc))
        doc["versions"]["numpy"] = "0.1"   # one policy: another major version is refused by both
        with pytest.raises(HwcostError, match="another major version"):
            load(json.dumps(doc))


@pytest.mark.parametrize("tamper,match", [
    (lambda r: r["features"].update(flops=1.0), "unknown feature"),
    (lambda r: r["features"].update(macs="12"), r"train\[0\].features.'macs': expected int or float"),
    (lambda r: r["features"].pop("params"), "missing field train.0..features.'params'"),
    (lambda r: r["features"].update(macs=-5.0), "negative"),
    (lambda r: r.update(latency_ms=True), "latency_ms"),
    (lambda r: r["features"].update(macs="NaN"), "NaN is not a number JSON allows"),
], ids=["unknown feature", "wrong type", "missing feature", "negative", "bool latency", "NaN"])
def test_a_tampered_file_is_one_error_and_changes_no_later_fit(tmp_path, fresh_cache, tamper, match):
    before = OpLatencySurrogate(family="linear").fit(KEYS, LATENCY).predict(KEYS)
    counted = dict(fresh_cache)
    doc = json.loads(_op_file(tmp_path).read_text())
    tamper(doc["train"][0])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc).replace('"NaN"', "NaN"))
    with pytest.raises(HwcostError, match=match) as e:
        load_surrogate(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert fresh_cache == counted
    np.testing.assert_array_equal(OpLatencySurrogate(family="linear").fit(KEYS, LATENCY).predict(KEYS), before)


def test_a_file_s_features_stay_on_the_loaded_surrogate(tmp_path, fresh_cache):
    """Well-formed but wrong features (10x the MACs): the loaded surrogate uses them (and says its refit
    does not reproduce the file), the process-wide cache never sees them."""
    doc = json.loads(_op_file(tmp_path).read_text())
    for r in doc["train"]:
        r["features"]["macs"] *= 10
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(doc))
    fresh_cache.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", persistence.SurrogateVersionWarning)
        loaded = load_surrogate(odd)
    assert loaded.stored_features_[KEYS[0]][0] == doc["train"][0]["features"]["macs"]
    assert not fresh_cache   # nothing counted, nothing stored process-wide
    assert surrogate.derived_features(KEYS[0])[0] * 10 == pytest.approx(loaded.stored_features_[KEYS[0]][0])


def test_arch_file_with_wrong_types_is_one_error(tmp_path):
    doc = json.loads(_arch().to_json())
    doc["train"]["latency_ms"][0] = "fast"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(HwcostError, match=r"bad.json: field train.latency_ms must be a list of numbers"):
        ArchLatencySurrogate.load(bad)


@pytest.mark.parametrize("kind", ["op", "arch"])
def test_an_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch, kind):
    path = tmp_path / "s.json"
    if kind == "op":
        old, new = (OpLatencySurrogate(family="linear").fit(KEYS, [v * f for v in LATENCY]) for f in (1, 2))
    else:
        old = _arch()
        new = ArchLatencySurrogate(features="counts", model="nnls").fit(ARCHS, np.arange(len(ARCHS)) + 1.0)
    old.save(path)
    saved = path.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    import device_tables._io as io
    monkeypatch.setattr(io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == saved and sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_one_holdout_split():
    train, test = persistence.holdout_split(["a"] * 6 + ["b"] * 3, lambda n: 2 if n >= 5 else 0, seed=0)
    assert len(test) == 2 and set(test) <= set(range(6)) and sorted(train + test) == list(range(9))
    # the architecture split: n_samples random rows train (as fit_holdout has always drawn them)
    perm = np.random.default_rng(3).permutation(20)
    assert persistence.holdout_split([0] * 20, lambda n: n - 5, seed=3) == (sorted(perm[:5].tolist()),
                                                                            sorted(perm[5:].tolist()))
