"""The CUDA path: eager vs CUDA graphs, checkpoints, snapshots for CPU actors (GPU only)."""

import numpy as np
import pytest
import torch

from common.config import EncoderTopology, PolicyCritic
from common.networks import PolicyNet, load_policy_state
from learner.streams import SideStreams
from learner.td3 import TD3Learner
from tests.unit.learner_fixtures import SMALL_SPEC, random_batch, run_on, small_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# TF32 products and cuDNN's autotuned algorithms differ in the last bits between two learners.
ATOL = 2e-3


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("topology", list(EncoderTopology))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("order", list(PolicyCritic))
def test_cuda_graphs_match_eager_updates_and_survive_a_reload(tmp_path, topology, precision,
                                                              order):
    base = run_on(small_config(topology, policy_critic=order), device="cuda",
                               precision=precision)
    eager = TD3Learner(SMALL_SPEC, base, seed=0)
    graphed = TD3Learner(SMALL_SPEC, run_on(base, cuda_graphs=True), seed=0)
    for i in range(14):  # past the warm-up of both kinds of update, so both graphs replay
        batch = random_batch(SMALL_SPEC, 16, seed=i)
        stats_eager, stats_graph = eager.update(batch), graphed.update(batch)
    assert stats_graph.policy_updated and graphed.updates == 14
    np.testing.assert_allclose(stats_graph.td_error, stats_eager.td_error, atol=ATOL)
    for name, module in graphed.nets.modules().items():
        assert _max_diff(module, eager.nets.modules()[name]) < ATOL, name
    graphed.save(tmp_path / "ckpt.pt")
    eager.load(tmp_path / "ckpt.pt")
    graphed.load(tmp_path / "ckpt.pt")  # replaces optimizer state: graphs are captured again
    for i in range(14, 20):
        batch = random_batch(SMALL_SPEC, 16, seed=i)
        eager.update(batch), graphed.update(batch)
    assert _max_diff(graphed.nets.critic, eager.nets.critic) < ATOL


def test_cuda_graphs_replay_fresh_image_shifts():
    # The shifts are drawn outside the step and copied into the graph's inputs: a graphed
    # learner that replayed its first draws would drift away from the eager one.
    base = run_on(small_config(image_shift=4), device="cuda", precision="fp32")
    eager = TD3Learner(SMALL_SPEC, base, seed=0)
    graphed = TD3Learner(SMALL_SPEC, run_on(base, cuda_graphs=True), seed=0)
    for i in range(14):
        batch = random_batch(SMALL_SPEC, 16, seed=i)
        stats_eager, stats_graph = eager.update(batch), graphed.update(batch)
    np.testing.assert_allclose(stats_graph.td_error, stats_eager.td_error, atol=ATOL)
    for name, module in graphed.nets.modules().items():
        assert _max_diff(module, eager.nets.modules()[name]) < ATOL, name


@pytest.mark.parametrize("compiled", [False, True])
def test_a_first_convolution_on_blocks_matches_the_strided_one(compiled):
    # "auto" is blocks on CUDA; the strided learner is the NatureCNN as written. Compiled
    # and graphed: the blocked kernel is rearranged inside the captured, compiled step.
    base = run_on(small_config(), device="cuda", precision="fp32",
                               compile=compiled, cuda_graphs=compiled)
    learners = {c: TD3Learner(SMALL_SPEC, run_on(base, first_conv=c), seed=0)
                for c in ("strided", "auto")}
    assert learners["auto"].kernels.first_conv_blocks
    assert not learners["strided"].kernels.first_conv_blocks
    for i in range(14):
        batch = random_batch(SMALL_SPEC, 16, seed=i)
        strided, blocks = learners["strided"].update(batch), learners["auto"].update(batch)
    np.testing.assert_allclose(blocks.td_error, strided.td_error, atol=ATOL)
    for name, module in learners["auto"].nets.modules().items():
        assert _max_diff(module, learners["strided"].nets.modules()[name]) < ATOL, name


def test_policy_state_from_cuda_loads_into_a_cpu_actor():
    cfg = run_on(small_config(), device="cuda")
    learner = TD3Learner(SMALL_SPEC, cfg, seed=0)
    for i in range(4):
        learner.update(random_batch(SMALL_SPEC, 16, seed=i))
    actor = PolicyNet.from_config(SMALL_SPEC, cfg.network)
    load_policy_state(actor, learner.policy_state())
    batch = random_batch(SMALL_SPEC, 8, seed=99)
    with torch.no_grad():
        on_cpu = actor(torch.from_numpy(batch.obs_image), torch.from_numpy(batch.obs_vector))
        on_gpu = learner.nets.policy(torch.from_numpy(batch.obs_image).cuda(),
                                     torch.from_numpy(batch.obs_vector).cuda()).cpu()
    torch.testing.assert_close(on_cpu, on_gpu, atol=1e-3, rtol=1e-3)


def test_cuda_checkpoint_loads_into_a_cpu_learner(tmp_path):
    cfg = run_on(small_config(), device="cuda")
    learner = TD3Learner(SMALL_SPEC, cfg, seed=0)
    for i in range(3):
        learner.update(random_batch(SMALL_SPEC, 16, seed=i))
    learner.save(tmp_path / "ckpt.pt")
    cpu = TD3Learner(SMALL_SPEC, small_config(), seed=1)
    cpu.load(tmp_path / "ckpt.pt")
    assert cpu.updates == 3 and _max_diff(cpu.nets.critic, learner.nets.critic.cpu()) == 0.0
    stats = cpu.update(random_batch(SMALL_SPEC, 16, seed=3))
    assert np.isfinite(stats.critic_loss)


@pytest.mark.parametrize("graphs", [False, True])
def test_pipelined_packed_batches_match_synchronous_separate_ones(graphs):
    from tests.unit.learner_fixtures import packed_batch
    cfg = run_on(small_config(), device="cuda", cuda_graphs=graphs)
    sync, piped = TD3Learner(SMALL_SPEC, cfg, seed=0), TD3Learner(SMALL_SPEC, cfg, seed=0)
    batches = [packed_batch(SMALL_SPEC, 16, seed=i) for i in range(14)]
    expected = [sync.update(b._replace(obs_image=b.obs_image.copy(), next_image=b.next_image.copy()))
                for b in batches]
    got, pending = [], None
    for b in batches:  # as LearnerLoop runs it: N+1 launched (and its batch copied) before N is read
        launched = piped.launch(b)
        if pending is not None:
            got.append(pending.result())
        pending = launched
    got.append(pending.result())
    for e, g in zip(expected, got):
        assert g.updates == e.updates
        np.testing.assert_allclose(g.td_error, e.td_error, atol=ATOL)
    assert _max_diff(piped.nets.critic, sync.nets.critic) < ATOL


def test_graphs_read_the_copy_slots_in_place_and_copy_batches_from_elsewhere():
    from learner.device import DeviceBatch
    base = run_on(small_config(), device="cuda")
    eager = TD3Learner(SMALL_SPEC, base, seed=0)
    graphed = TD3Learner(SMALL_SPEC, run_on(base, cuda_graphs=True), seed=0)
    for i in range(12):
        batch = random_batch(SMALL_SPEC, 16, seed=i)
        eager.update(batch), graphed.update(batch)
    run = graphed.runner.executor
    # captured on the copy slots' buffers themselves: no static batch, nothing copied into one
    assert all(in_place for _, in_place in run.captured) and run.in_place_layouts == 2
    assert {policy for policy, _ in run.captured} == {False, True}
    captured = len(run.captured)
    for i in range(12, 18):  # device batches in fresh memory each time: the static-copy graphs
        batch = random_batch(SMALL_SPEC, 16, seed=i)
        moved = [DeviceBatch(*(t.clone() for t in learner.to_device(batch)))
                 for learner in (eager, graphed)]
        stats_eager = eager.update_on_device(moved[0])
        stats_graph = graphed.update_on_device(moved[1])
        np.testing.assert_allclose(stats_graph.td_error, stats_eager.td_error, atol=ATOL)
    assert sorted(run.captured[captured:]) == [(False, False), (True, False)]  # the static copy's
    for name, module in graphed.nets.modules().items():
        assert _max_diff(module, eager.nets.modules()[name]) < ATOL, name


def test_a_capture_joins_only_the_side_streams_it_forked():
    # Joining a side stream the capture never forked (here one an eager call used before)
    # would invalidate the capture; a stream joined from inside its own run stays to be joined.
    streams = SideStreams(torch.device("cuda"), ("used", "idle"))
    x = torch.arange(4.0, device="cuda")
    streams.run("idle", torch.add, x, 1)
    streams.join("used", "idle")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        def nested(t):
            out = t * 2
            streams.join("used")  # inside the stream itself: not a join of the main stream
            return out
        y = streams.run("used", nested, x)
        streams.join("used", "idle")
    x.add_(1)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, 2 * (torch.arange(4.0, device="cuda") + 1))


@pytest.mark.parametrize("graphs", [False, True])
def test_frame_cache_batches_pipelined_match_pixel_batches(graphs):
    # The cache stores each batch's new frames and gathers its block on the update's stream,
    # after the earlier updates that read the same rows: launched one ahead, with the copy
    # slots alternating and the graphs reading the gathered block in place.
    from tests.unit.test_frame_cache import _learner_batches

    spec, batches = _learner_batches(14)
    base = run_on(small_config(), device="cuda", precision="fp32",
                               cuda_graphs=graphs)
    cached, pixels = TD3Learner(spec, base, seed=0), TD3Learner(spec, base, seed=0)
    pending, stats = None, []
    for cached_batch, pixel_batch in batches:
        launched = cached.launch(cached_batch)
        if pending is not None:
            stats.append(pending.result())
        pending = launched
        want = pixels.update(pixel_batch)
    stats.append(pending.result())
    np.testing.assert_allclose(stats[-1].td_error, want.td_error, atol=ATOL)
    for name, module in cached.nets.modules().items():
        assert _max_diff(module, pixels.nets.modules()[name]) < ATOL, name


def test_cached_and_packed_batches_share_the_slots_the_graphs_read():
    # A CachedBatch gathers its block into the slot's "frames" buffer, where a PackedBatch's
    # block is copied: the graphs captured on pixel batches replay cached ones in place.
    from tests.unit.test_frame_cache import _learner_batches

    spec, batches = _learner_batches(16)
    base = run_on(small_config(), device="cuda", precision="fp32")
    eager = TD3Learner(spec, base, seed=0)
    graphed = TD3Learner(spec, run_on(base, cuda_graphs=True), seed=0)
    # Pixel batches first (the graphs are captured on them), then the cache's from its start:
    # each CachedBatch counts only on the frames of the CachedBatches before it.
    for batch in [p for _, p in batches[:10]] + [c for c, _ in batches[:6]]:
        stats_eager, stats_graph = eager.update(batch), graphed.update(batch)
    np.testing.assert_allclose(stats_graph.td_error, stats_eager.td_error, atol=ATOL)
    run = graphed.runner.executor
    assert all(in_place for _, in_place in run.captured) and run.in_place_layouts == 2
    for name, module in graphed.nets.modules().items():
        assert _max_diff(module, eager.nets.modules()[name]) < ATOL, name
