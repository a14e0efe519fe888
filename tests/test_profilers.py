"""Profilers: shape enumeration, layer keys, the timer, backends, the profile
pipeline and the CLI's error messages. No timing asserts: the timer is driven
by a fake clock."""
from __future__ import annotations

import itertools
import json
import math

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from device_tables import Entry, Journal, OpKey, TableError, load_table
from profilers import backends as B
from profilers import runner
from profilers.measure import Measurement, Settings, Timer, cpu_block_timer, median_ci_ranks
from profilers.profile import Job, ProfileInterrupted, journal_path, profile, space_jobs
from profilers.shapes import (key_module, model_layer_keys, parse_input_shape, resolve_configs,
                              resolve_model, space_keys, torch_key_module)
from spaces import build_network, get_space
from spaces.errors import HwcostError

# ---------------------------------------------------------------- space keys


def _edge_shapes(C: int, layers: int, size: int = 32) -> set[tuple[int, int, int]]:
    """(C, H, stride) of every cell edge, from the DARTS config arithmetic alone:
    reductions at L/3 and 2L/3 double C and halve H; a reduction cell's edges
    from its inputs have stride 2, those from its nodes stride 1."""
    shapes, c, h = set(), C, size
    for i in range(layers):
        if i in (layers // 3, 2 * layers // 3):
            c *= 2
            shapes |= {(c, h, 2), (c, h // 2, 1)}
            h //= 2
        else:
            shapes.add((c, h, 1))
    return shapes


@pytest.fixture(scope="module")
def search_keys():
    return space_keys("darts", ["cifar10-search"])


def test_search_config_has_8_cells_reducing_at_2_and_5():
    (cfg,) = resolve_configs("darts", "cifar10-search")
    net = build_network(cfg)
    assert (cfg.C, cfg.layers) == (16, 8)
    assert [i for i, cell in enumerate(net.cells) if cell.reduction] == [2, 5]


@pytest.mark.parametrize("networks,C,layers", [("cifar10-search", 16, 8), ("cifar10", 36, 20)])
def test_every_searchable_op_at_every_edge_shape(networks, C, layers):
    keys = space_keys("darts", networks)
    want = _edge_shapes(C, layers)
    assert len(want) == 5
    for op in get_space("darts").searchable_ops():  # none included: it is a supernet op
        got = {(k.c_in, k.h, k.stride) for k in keys if k.op == op}
        assert got == want, op
        assert all(k.c_in == k.c_out and k.h == k.w for k in keys if k.op == op)


def test_fixed_parts_come_from_the_builder(search_keys):
    by_op = lambda op: {(k.c_in, k.c_out, k.h, k.stride) for k in search_keys if k.op == op}  # noqa: E731
    assert by_op("stem_cifar") == {(3, 48, 32, 1)}
    assert by_op("classifier") == {(256, 10, 8, 1)}
    # s0 after a reduction cell (cells 3 and 6) goes through FactorizedReduce.
    assert by_op("factorized_reduce") == {(64, 32, 32, 2), (128, 64, 16, 2)}
    assert {(k.c_in, k.h, dict(k.extra)["n_inputs"]) for k in search_keys if k.op == "node_sum"} == \
        {(16, 32, 2), (32, 16, 2), (64, 8, 2)}
    assert by_op("concat") == {(16, 64, 32, 1), (32, 128, 16, 1), (64, 256, 8, 1)}
    # preprocess: (C_prev_prev or C_prev) -> C of each cell, from the config arithmetic.
    want, c_pp, c_p, c, prev_red = set(), 48, 48, 16, False
    for i in range(8):
        red = i in (2, 5)
        c = 2 * c if red else c
        h = 32 >> sum(r < i for r in (2, 5))
        if not prev_red:
            want.add((c_pp, c, h, 1))
        want.add((c_p, c, h, 1))
        c_pp, c_p, prev_red = c_p, 4 * c, red
    assert by_op("preprocess") == want


def test_keys_are_unique_sorted_and_deterministic(search_keys):
    assert len(set(search_keys)) == len(search_keys)
    assert space_keys("darts", ["cifar10-search", "cifar10-search"]) == search_keys
    both = space_keys("darts", "cifar10-search,cifar10")
    assert set(search_keys) <= set(both) and len(set(both)) == len(both)
    ops = list(get_space("darts").ops)
    assert [ops.index(k.op) for k in search_keys] == sorted(ops.index(k.op) for k in search_keys)


def test_nb201_keys_and_batch():
    keys = space_keys("nb201", ["nb201"], batch=4)
    assert all(k.batch == 4 for k in keys)
    for op in get_space("nb201").searchable_ops():
        assert {(k.c_in, k.h, k.stride) for k in keys if k.op == op} == {(16, 32, 1), (32, 16, 1), (64, 8, 1)}
    assert {(k.c_in, k.c_out, k.h) for k in keys if k.op == "resblock"} == {(16, 32, 32), (32, 64, 16)}
    assert {(k.c_in, dict(k.extra)["n_inputs"]) for k in keys if k.op == "node_sum"} == \
        {(c, n) for c in (16, 32, 64) for n in (2, 3)}
    assert len(keys) == 5 * 3 + 2 + 6 + 1 + 1


def test_sharpdarts_and_imagenet_presets():
    keys = space_keys("sharpdarts", ["imagenet"])
    assert {k.op for k in keys} >= set(get_space("sharpdarts").searchable_ops()) | {"stem0_imagenet", "stem1_imagenet"}
    stem0 = [k for k in keys if k.op == "stem0_imagenet"]
    assert [(k.c_in, k.c_out, k.h) for k in stem0] == [(3, 48, 224)]


def test_unknown_names_are_clear_errors():
    with pytest.raises(HwcostError, match="known: cifar10, cifar10-search, imagenet"):
        resolve_configs("darts", "cifar100")
    with pytest.raises(HwcostError, match="unknown space"):
        space_keys("nope", ["cifar10"])
    with pytest.raises(HwcostError, match="nb201"):
        resolve_configs("nb201", "cifar10-search")


@pytest.mark.parametrize("op", ["sep_conv_5x5", "skip_connect", "none", "concat", "factorized_reduce",
                                "classifier"])
def test_a_keys_module_is_rebuilt_and_runs(search_keys, op):
    key = next(k for k in search_keys if k.op == op and (k.stride == 2 or op not in ("skip_connect", "none")))
    module, inputs = key_module(key)
    assert all(x.shape[0] == key.batch and x.shape[1] == key.c_in and x.shape[2] == key.h for x in inputs)
    with torch.no_grad():
        y = module(*inputs)
    assert y.shape[1] == key.c_out
    if y.dim() == 4:
        assert y.shape[2] == key.h // key.stride


# ---------------------------------------------------------------- model layers


def _analytical_params(key: OpKey) -> int:
    """Parameters a layer key implies, from its fields alone."""
    ex = dict(key.extra)
    if key.op == "Conv2d":
        return key.c_out * key.c_in // ex["groups"] * ex["kernel"] ** 2 + ex["bias"] * key.c_out
    if key.op == "Linear":
        return key.c_in * key.c_out + ex["bias"] * key.c_out
    if key.op == "BatchNorm2d":
        return 2 * key.c_in * ex["affine"]
    return 0


@pytest.fixture(scope="module")
def resnet18_layers():
    model = resolve_model("torchvision:resnet18")
    return model, model_layer_keys(model, (1, 3, 64, 64))


def test_resnet18_layers_add_up_to_the_model(resnet18_layers):
    model, layers = resnet18_layers
    assert sum(_analytical_params(l.key) * l.count for l in layers) == sum(p.numel() for p in model.parameters())
    count = lambda op: sum(l.count for l in layers if l.key.op == op)  # noqa: E731
    assert (count("Conv2d"), count("BatchNorm2d"), count("Linear")) == (20, 20, 1)
    assert count("add") == 8 and count("flatten") == 1  # functional ops between the modules
    assert len({l.key for l in layers}) == len(layers)
    stem = layers[0].key
    assert (stem.op, stem.c_in, stem.c_out, stem.h, stem.stride, dict(stem.extra)["kernel"]) == \
        ("Conv2d", 3, 64, 64, 2, 7)


def test_layer_modules_run_and_keys_rebuild(resnet18_layers):
    _, layers = resnet18_layers
    for layer in layers:
        with torch.no_grad():
            layer.module(*layer.inputs)
        m, ins = torch_key_module(layer.key)  # every resnet18 layer is rebuildable from its key
        assert sum(p.numel() for p in m.parameters()) == _analytical_params(layer.key)
        with torch.no_grad():
            assert m(*ins).shape == layer.module(*layer.inputs).shape


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace it
            x = x.mean((2, 3))
        return self.fc(x)


def test_untraceable_model_falls_back_to_leaf_hooks():
    layers = model_layer_keys(_Untraceable(), (2, 3, 8, 8))
    assert [l.key.op for l in layers] == ["Conv2d", "Linear"]
    assert layers[0].key.batch == 2 and layers[1].key.c_in == 4


def test_model_and_input_errors():
    with pytest.raises(HwcostError, match="torchvision:NAME"):
        resolve_model("resnet18")
    with pytest.raises(HwcostError, match="unknown torchvision model"):
        resolve_model("torchvision:resnet_does_not_exist")
    for bad in ("1x3x", "axb", "0x3x4x4", "224"):
        with pytest.raises(HwcostError, match="bad --input"):
            parse_input_shape(bad)
    assert parse_input_shape("1x3x224x224") == (1, 3, 224, 224)


# ---------------------------------------------------------------- the timer


class FakeClock:
    """A clock the op under test advances: run times are scripted, not measured."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _fake_timer(times, settings, overhead=0.0):
    clock = FakeClock()
    it = iter(times)

    def fn():
        clock.t += next(it)

    def block_timer(f, k):
        t0 = clock()
        for _ in range(k):
            f()
        clock.t += overhead  # the timer's own cost, per block
        return clock() - t0

    return Timer(fn, settings, block_timer, clock), clock


def test_median_ci_ranks_match_the_binomial():
    assert median_ci_ranks(5) is None  # 2 * 0.5**5 > 0.05: no 95% interval from 5 samples
    assert median_ci_ranks(6) == (0, 5)
    assert median_ci_ranks(10) == (1, 8)
    assert median_ci_ranks(100) == (39, 60)
    for n in (20, 57, 400):
        lo, hi = median_ci_ranks(n)
        cover = 1 - 2 * sum(math.comb(n, i) for i in range(lo + 1)) / 2 ** n
        assert cover >= 0.95 and 1 - 2 * sum(math.comb(n, i) for i in range(lo + 2)) / 2 ** n < 0.95
    lo_exact, _ = median_ci_ranks(1000)
    lo_approx, _ = median_ci_ranks(1001)
    assert abs(lo_exact - lo_approx) <= 1


def test_timer_stops_when_the_ci_is_met_and_sizes_blocks():
    s = Settings(rel_ci=0.02, max_time_s=2.0, min_sample_s=5e-4, warmup_s=0.01, min_samples=10)
    timer, clock = _fake_timer(itertools.repeat(1e-4), s, overhead=2e-6)
    m = timer.measure()
    assert m.runs_per_sample == 5  # 5 x 0.1 ms >= 0.5 ms
    assert m.n == 10 and not m.capped and m.quality == "ok"
    assert m.median == pytest.approx(1e-4)  # the 2 us per block were measured and subtracted
    assert m.overhead_s == pytest.approx(2e-6)
    assert clock.t < 0.05


def test_timer_stops_at_the_cap_when_the_ci_is_not_met():
    # Alternating 1 / 2 ms runs: the median's CI never narrows to 2%.
    s = Settings(rel_ci=0.02, max_time_s=0.5, min_sample_s=1e-4, warmup_s=0.01, noisy_retries=0)
    timer, clock = _fake_timer(itertools.cycle([1e-3, 2e-3]), s)
    m = timer.measure()
    assert m.capped and m.quality == "noisy"  # IQR/median = 50%: noisy wins over capped
    assert 0.5 <= clock.t < 0.5 + 0.01 and m.attempts == 1


def test_a_noisy_window_is_retried_and_the_quietest_kept():
    s = Settings(rel_ci=0.02, max_time_s=0.5, min_sample_s=1e-4, warmup_s=0.01, noisy_retries=2)
    # A disturbed first window (alternating 1 / 2 ms) until the cap, then a quiet one.
    disturbed = (1e-3 if i % 2 else 2e-3 for i in range(10**9))
    times = itertools.chain(itertools.islice(disturbed, 0, 300), itertools.repeat(1.2e-3))
    timer, clock = _fake_timer(times, s)
    m = timer.measure()
    assert m.attempts == 2 and m.quality == "ok" and m.median == pytest.approx(1.2e-3)
    assert m.to_entry(OpKey("darts", "none", 1, 8, 8, 8, 8, 1)).extra["attempts"] == 2
    # Always noisy: 1 + noisy_retries windows, then the least noisy is kept, flagged.
    timer, clock = _fake_timer(itertools.cycle([1e-3, 2e-3]), s)
    m = timer.measure()
    assert m.attempts == 3 and m.quality == "noisy" and clock.t >= 1.5


def test_passes_keep_the_quietest_window_of_a_phased_host():
    """A host whose first 0.7 s of every second runs the op 1.7x slower (the phases
    `hwcost host` shows): one 1 s window reports the slow phase, five
    0.2 s windows find the quiet one."""
    clock = FakeClock()

    def fn():
        clock.t += 1.7e-3 if clock.t % 1.0 < 0.7 else 1e-3

    def block_timer(f, k):
        t0 = clock()
        for _ in range(k):
            f()
        return clock() - t0

    class Phased(B.Backend):
        name = "phased"
        wall_clock = clock

        def prepare(self, module, inputs):
            return fn

        def block_timer(self, settings):
            return block_timer

    base = Settings(rel_ci=1e-6, max_time_s=1.0, min_sample_s=1e-3, warmup_s=0.001, noisy_retries=0)
    from profilers.profile import measure_model, measure_models
    one = measure_model(nn.Identity(), (1,), Phased(), replace(base, passes=1))
    assert one.median == pytest.approx(1.7e-3) and one.pass_medians == [one.median]
    clock.t = 0.0
    five = measure_model(nn.Identity(), (1,), Phased(), replace(base, passes=5))
    assert five.median == pytest.approx(1e-3) and len(five.pass_medians) == 5
    assert five.pass_medians[0] == pytest.approx(1.7e-3)  # the first windows sat in the slow phase
    assert 1.0 <= clock.t < 1.05  # max_time_s is shared by the passes
    assert five.summary()["passes"] == 5
    # the windows name the host's 1.7x phase; one window cannot
    assert five.window_spread == pytest.approx(1.7) and five.summary()["window_spread"] == pytest.approx(1.7)
    assert "1.70x" in five.phases_note() and "1 to 1.7 ms" in five.phases_note()
    assert one.window_spread is None and one.phases_note() is None
    # Two networks interleaved: 5 rounds of one 0.1 s window each; both see the quiet phase.
    clock.t = 0.0
    both = measure_models([(nn.Identity(), (1,)), (nn.ReLU(), (1,))], Phased(), replace(base, passes=5))
    assert [m.median for m in both] == pytest.approx([1e-3, 1e-3])
    assert [len(m.pass_medians) for m in both] == [5, 5] and 2.0 <= clock.t < 2.05  # 0.2 s per network and round


def test_windows_within_the_quiet_spread_add_no_note():
    from profilers.measure import QUIET_SPREAD, Measurement
    m = Measurement(samples=[1e-3] * 5, pass_medians=[1e-3, 1e-3 * QUIET_SPREAD * 0.999, 1.01e-3])
    assert m.window_spread == pytest.approx(QUIET_SPREAD * 0.999) and m.phases_note() is None
    assert "(1.20x)" in Measurement(samples=[1e-3], pass_medians=[1e-3, 1.2e-3]).phases_note()
    # a window timed at zero (a clock too coarse) is no window: left out of the spread and the note
    zero = Measurement(samples=[1e-3], pass_medians=[0.0, 1e-3, 1.2e-3])
    assert zero.window_spread == pytest.approx(1.2) and "ran 1 to 1.2 ms" in zero.phases_note()


def test_window_settings_share_the_cap_between_passes():
    s = Settings(max_time_s=2.0, passes=4, noisy_retries=2)
    w = s.window()
    assert (w.max_time_s, w.noisy_retries, w.passes) == (0.5, 0, 1)
    assert Settings(passes=1).window() == Settings(passes=1)
    for bad in (0, 1.5, True):
        with pytest.raises(HwcostError, match="passes"):
            Settings(passes=bad)


def test_quality_flags():
    s = Settings(rel_ci=0.02, min_samples=10, noisy_iqr=0.10)
    tight = Measurement([1.0 + 0.001 * i for i in range(40)], settings=s)
    assert tight.quality == "ok" and tight.converged
    few = Measurement([1.0, 1.001, 1.002, 1.003], settings=s)
    assert few.quality == "capped" and math.isinf(few.rel_ci)
    # Bimodal: IQR/median 8.5% (not noisy), but the median's CI spans both modes.
    wide = Measurement([1.0] * 9 + [1.06] * 2 + [1.09] * 9, settings=s)
    assert wide.quality == "capped"
    noisy = Measurement([1.0, 1.5] * 20, settings=s)
    assert noisy.quality == "noisy"
    e = tight.to_entry(OpKey("darts", "none", 1, 8, 8, 8, 8, 1))
    assert e.median_ms == pytest.approx(tight.median * 1e3) and e.n == 40 and e.quality == "ok"
    assert Measurement([0.0] * 10, settings=s).to_entry(OpKey("darts", "none", 1, 8, 8, 8, 8, 1)).median_ms > 0


def test_settings_are_validated():
    with pytest.raises(HwcostError, match="rel_ci"):
        Settings(rel_ci=0)
    with pytest.raises(HwcostError, match="max_time_s"):
        Settings(max_time_s=-1)


def test_cpu_block_timer_reads_the_clock_around_k_calls():
    clock = FakeClock()
    calls = []
    timer = cpu_block_timer(clock)

    def fn():
        calls.append(1)
        clock.t += 0.25

    assert timer(fn, 4) == pytest.approx(1.0) and len(calls) == 4


# The remote runner (profilers.runner) and the local Timer are one loop: fed the same run times through a
# fake clock, they agree on the median, the CI, the samples, the quality and when they stopped.
def _noisy_then_quiet():
    return itertools.chain(itertools.islice(itertools.cycle([1e-3, 2e-3]), 300), itertools.repeat(1.2e-3))


ONE_LOOP = {  # name: (run times, settings of both paths, timer overhead per block)
    "converges": (lambda: itertools.repeat(1e-4), dict(rel_ci=0.02, max_time_s=2.0, min_sample_s=5e-4,
                                                       warmup_s=0.01, min_samples=10), 2e-6),
    "capped and noisy": (lambda: itertools.cycle([1e-3, 2e-3]), dict(rel_ci=0.02, max_time_s=0.5, min_sample_s=1e-4,
                                                                     warmup_s=0.01, noisy_retries=0), 0.0),
    "retried": (_noisy_then_quiet, dict(rel_ci=0.02, max_time_s=0.5, min_sample_s=1e-4, warmup_s=0.01,
                                        noisy_retries=2), 1e-6),
    "CI met after several checks": (
        lambda: iter(np.random.default_rng(0).lognormal(math.log(1e-3), 0.02, 10**6).tolist()),
        dict(rel_ci=0.002, max_time_s=3.0, min_sample_s=1e-3, warmup_s=0.05, min_samples=12), 3e-7),
    "warm-up past half the cap": (lambda: itertools.repeat(2e-3), dict(rel_ci=0.05, max_time_s=0.02,
                                                                       min_sample_s=1e-3, warmup_s=1.0), 0.0),
}


@pytest.mark.parametrize("case", ONE_LOOP)
def test_runner_and_local_timer_give_the_same_measurement(case):
    times, shared, overhead = ONE_LOOP[case]
    remote_timer, remote_clock = _fake_timer(times(), Settings(**shared), overhead)  # its fn, block timer, clock
    row = runner.measure(remote_timer.fn, runner.check_settings(shared, "test"), remote_timer.block_timer,
                         remote_clock)
    local_timer, local_clock = _fake_timer(times(), Settings(**shared), overhead)
    m = local_timer.measure()
    assert remote_clock.t == local_clock.t   # the same stop decision, at the same moment
    assert row["n"] == m.n and row["runs_per_sample"] == m.runs_per_sample
    assert row["median_ms"] == m.median * 1e3 and row["p10_ms"] == m.p10 * 1e3 and row["p90_ms"] == m.p90 * 1e3
    assert row["iqr_ms"] == m.iqr * 1e3 and row["quality"] == m.quality
    assert row["rel_ci"] == (m.rel_ci if math.isfinite(m.rel_ci) else None)
    assert row["overhead_ms"] == m.overhead_s * 1e3 == pytest.approx(overhead * 1e3)
    assert row.get("attempts", 1) == m.attempts


def test_each_statistic_has_one_copy():
    from profilers import measure
    assert measure.median_ci_ranks is runner.median_ci_ranks and measure.cpu_block_timer is runner.cpu_block_timer
    m = Measurement([3.0, 1.0, 2.0, 5.0, 4.0, 6.0, 8.0, 7.0])
    assert m.median == runner.quantile(sorted(m.samples), 0.5) == 4.5
    timer, clock = _fake_timer(itertools.repeat(1e-3), Settings())   # the runner's max_samples also stops
    w = runner.sample_window(timer.fn, dict(runner.DEFAULT_SETTINGS, max_samples=4, rel_ci=1e-9),
                             timer.block_timer, clock)
    assert len(w["samples"]) == 4 and w["capped"]


# ---------------------------------------------------------------- backends


class FakeEvent:
    """A CUDA event pair stand-in: record() stamps a fake clock; synchronize() is required."""
    clock = FakeClock()

    def __init__(self):
        self.stamp, self.synced = None, False

    def record(self):
        self.stamp = FakeEvent.clock()

    def synchronize(self):
        self.synced = True

    def elapsed_time(self, end):
        assert end.synced, "elapsed_time read before the end event was synchronised"
        return (end.stamp - self.stamp) * 1e3  # milliseconds, like torch.cuda.Event


def test_cuda_block_timer_with_fake_events():
    made = []

    def factory():
        made.append(FakeEvent())
        return made[-1]

    def kernel():
        FakeEvent.clock.t += 3e-4

    timer = B.cuda_block_timer(factory)
    assert timer(kernel, 5) == pytest.approx(1.5e-3)
    assert len(made) == 2 and made[1].synced
    m = Timer(kernel, Settings(warmup_s=1e-3, max_time_s=1.0), timer, FakeEvent.clock).measure()
    assert m.median == pytest.approx(3e-4) and m.quality == "ok"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_torch_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(HwcostError, match="torch-cuda needs a CUDA GPU"):
        B.get_backend("torch-cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_cuda_measures_an_op():  # pragma: no cover - runs on GPU machines only
    key = space_keys("nb201", ["nb201"])[0]
    m = B.get_backend("torch-cuda").measure(*key_module(key), Settings(max_time_s=0.5))
    assert m.median > 0


def test_backend_registry_errors():
    with pytest.raises(HwcostError, match="unknown backend 'tpu'.*ort-cpu.*torch-cpu"):
        B.get_backend("tpu")
    with pytest.raises(HwcostError, match="not available.*available: .*CPUExecutionProvider"):
        B.get_backend("ort:NoSuchExecutionProvider")
    with pytest.raises(HwcostError, match="threads"):
        B.get_backend("torch-cpu", threads=0)
    with pytest.raises(HwcostError, match="float32"):
        B.get_backend("ort-cpu", dtype="float16")


# every registered backend's contract (measures, names, errors): tests/test_backend_registry.py

def test_ort_records_its_session_settings():
    rt = B.get_backend("ort:CPUExecutionProvider").runtime()
    assert rt["backend"] == "ort-cpu" and rt["graph_optimization"] == "all" and rt["io_binding"] is True


# ---------------------------------------------------------------- profile pipeline

FAST = Settings(max_time_s=0.05, warmup_s=0.005, min_sample_s=2e-4)


def _jobs(n=3):
    return space_jobs("nb201", "nb201")[:n]


def test_profile_writes_a_table_and_removes_the_journal(tmp_path):
    out = tmp_path / "t.json"
    table = profile(_jobs(), B.get_backend("torch-cpu"), out, spaces=["nb201"], settings=FAST, progress=False)
    assert len(table) == 3 and not journal_path(out).exists()
    loaded = load_table(out, expect_space="nb201", expect_kind="op")
    assert loaded.keys() == table.keys()
    assert loaded.runtime["backend"] == "torch-cpu" and loaded.device["cpu"]
    assert loaded.measurement["rel_ci"] == 0.02 and loaded.measurement["call_overhead_ms"] > 0
    with pytest.raises(HwcostError, match="refusing to overwrite"):
        profile(_jobs(), B.get_backend("torch-cpu"), out, spaces=["nb201"], settings=FAST, progress=False)


@pytest.mark.parametrize("passes", [1, 3])
def test_ctrl_c_keeps_the_journal_and_resume_finishes(tmp_path, passes):
    out = tmp_path / "t.json"
    settings = replace(FAST, passes=passes, max_time_s=FAST.max_time_s * passes)
    stop_after = 2 if passes == 1 else 6  # with passes: midway through pass 2
    seen = []

    def interrupt(entry):
        seen.append(entry)
        if len(seen) == stop_after:
            raise KeyboardInterrupt

    rows = 4 * passes
    with pytest.raises(ProfileInterrupted, match=rf"after {stop_after} of {rows} rows.*--resume"):
        profile(_jobs(4), B.get_backend("torch-cpu"), out, spaces=["nb201"], settings=settings,
                progress=False, on_entry=interrupt)
    assert journal_path(out).exists() and not out.exists()
    with pytest.raises(HwcostError, match="--resume"):
        profile(_jobs(4), B.get_backend("torch-cpu"), out, spaces=["nb201"], settings=settings, progress=False)
    with pytest.raises(TableError, match="runtime.backend='torch-cpu'"):
        profile(_jobs(4), B.get_backend("ort-cpu"), out, spaces=["nb201"], settings=settings,
                progress=False, resume=True)
    with pytest.raises(HwcostError, match="max_time_s"):
        profile(_jobs(4), B.get_backend("torch-cpu"), out, spaces=["nb201"],
                settings=replace(settings, max_time_s=1), progress=False, resume=True)
    with pytest.raises(HwcostError, match="passes"):
        profile(_jobs(4), B.get_backend("torch-cpu"), out, spaces=["nb201"],
                settings=replace(settings, passes=passes + 1), progress=False, resume=True)
    remeasured = []
    table = profile(_jobs(4), B.get_backend("torch-cpu"), out, spaces=["nb201"], settings=settings,
                    progress=False, resume=True, on_entry=remeasured.append)
    assert len(table) == 4 and len(remeasured) == rows - stop_after
    measured = [(e.key, e.extra.get("pass")) for e in seen + remeasured]
    assert len(set(measured)) == len(measured) == rows  # every (key, pass) once: none lost, none twice
    for key in table.keys():
        mine = sorted((e for e in seen + remeasured if e.key == key), key=lambda e: e.extra.get("pass", 0))
        entry = table.get(key)
        if passes == 1:
            assert entry.to_json() == mine[0].to_json()
            continue
        # the entry is the quietest pass, and it records every pass (those measured before the interrupt too)
        assert entry.extra["pass_medians_ms"] == [e.median_ms for e in mine]
        best = min(mine, key=lambda e: e.median_ms)
        assert (entry.median_ms, entry.p10_ms, entry.p90_ms, entry.n) == (best.median_ms, best.p10_ms,
                                                                          best.p90_ms, best.n)
        assert entry.extra["quietest_pass"] == best.extra["pass"] and "pass" not in entry.extra
        assert entry.extra["samples_all_passes"] == sum(e.n for e in mine)


def test_model_layers_profile_records_counts(tmp_path):
    from profilers.profile import model_jobs
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    jobs = model_jobs(model, (1, 3, 10, 10))
    table = profile(jobs, B.get_backend("ort-cpu"), tmp_path / "m.json", spaces=["torch"], settings=FAST,
                    progress=False)
    assert sorted(e.extra["count"] for e in table.entries) == [1, 1, 2]  # ReLU at 8x8 twice


def test_measure_model():
    from profilers.profile import measure_model
    model = build_network(resolve_configs("nb201", "nb201")[0])
    m = measure_model(model, (1, 3, 32, 32), B.get_backend("ort-cpu"), replace(FAST, passes=3))
    s = m.summary()
    assert m.median > 0 and set(s) >= {"latency_ms", "p10_ms", "p90_ms", "n"}
    assert s["passes"] == 3 and s["latency_ms"] == pytest.approx(min(s["pass_medians_ms"]), rel=1e-5)


# ---------------------------------------------------------------- CLI errors


def _cli(argv):
    from hwcost import cli
    return cli.main(argv)


@pytest.mark.parametrize("argv,message", [
    (["profile", "--space", "darts", "--backend", "tpu"], "unknown backend 'tpu'"),
    (["profile", "--space", "nope"], "unknown space 'nope'"),
    (["profile", "--space", "darts", "--networks", "cifar100"], "unknown network configuration"),
    (["profile", "--model", "torchvision:resnet18", "--input", "1x3xbad"], "bad --input"),
    (["profile", "--model", "resnet18", "--input", "1x3x8x8"], "torchvision:NAME"),
    (["profile"], "either --space"),
    (["measure", "--model", "torchvision:resnet18", "--input", "3x"], "bad --input"),
    (["measure", "--space", "nb201", "--arch", "|bad|"], "bad NB201 architecture"),
    (["measure", "--genotype", "DARTS_V2", "--backend", "ort:NoSuchEP"], "not available"),
])
def test_cli_bad_input_is_one_line_exit_2(argv, message, tmp_path, capsys):
    out = ["--out", str(tmp_path / "t.json")] if argv[0] == "profile" else []
    assert _cli(argv + out) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_refuses_to_overwrite_and_to_mix_backends(tmp_path, capsys):
    out = tmp_path / "t.json"
    out.write_text("{}")
    assert _cli(["profile", "--space", "nb201", "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    out2 = tmp_path / "u.json"
    header = {"kind": "op", "spaces": ["nb201"], "device": {"name": "x"},
              "runtime": {"backend": "torch-cpu", "threads": 1, "batch": 1, "dtype": "float32",
                          "execution_provider": "cpu"}}
    Journal(journal_path(out2), header).close()
    assert _cli(["profile", "--space", "nb201", "--out", str(out2), "--resume", "--device-name", "x"]) == 2
    err = capsys.readouterr().err
    assert "runtime.backend='torch-cpu'" in err and err.count("\n") == 1


def test_cli_measure_json(capsys):
    assert _cli(["measure", "--space", "nb201", "--arch",
                 "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|",
                 "--backend", "torch-cpu", "--max-time", "0.2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["latency_ms"] > 0 and d["p10_ms"] <= d["latency_ms"] <= d["p90_ms"] and d["n"] >= 3
    assert d["backend"] == "torch-cpu" and d["input_shape"] == [1, 3, 32, 32]


@pytest.mark.parametrize("space,networks", [("darts", "cifar10-search,cifar10"), ("nb201", "nb201")])
@pytest.mark.parametrize("backend", ["ort-cpu", "torch-cpu"])
def test_shipped_tables_cover_their_space(space, networks, backend):
    from device_tables import load_bundled
    table = load_bundled(f"{space}_{backend}", expect_space=space, expect_kind="op")
    assert set(table.keys()) == set(space_keys(space, networks))
    rt = table.runtime
    assert (rt["backend"], rt["threads"], rt["batch"], rt["dtype"]) == (backend, 1, 1, "float32")
    assert table.device["cpu"] and table.measurement["rel_ci"] == 0.02


def test_measure_models_keeps_the_median_session():
    """Each network prepared in several sessions; the one with the median time is kept, all recorded."""
    import torch.nn as nn

    from profilers.measure import Measurement
    from profilers.profile import measure_models

    class Sessions(B.TorchCPU):
        def __init__(self):
            super().__init__()
            self.made = 0

        def prepare(self, module, inputs):
            self.made += 1
            fn = lambda: None  # noqa: E731
            fn.ms = [3.0, 1.0, 2.0, 7.0, 5.0, 6.0][self.made - 1]   # network 0: 3, 1, 2; network 1: 7, 5, 6
            return fn

        def measure_interleaved(self, fns, settings):
            return [Measurement([f.ms / 1e3] * 5) for f in fns]

    be = Sessions()
    a, b = measure_models([(nn.ReLU(), (1, 2)), (nn.Tanh(), (1, 2))], be, sessions=3)
    assert be.made == 6
    assert a.median == pytest.approx(2e-3) and b.median == pytest.approx(6e-3)
    assert a.session_medians == pytest.approx([3e-3, 1e-3, 2e-3])
    with pytest.raises(Exception, match="sessions"):
        measure_models([(nn.ReLU(), (1, 2))], be, sessions=0)
