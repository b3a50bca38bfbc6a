"""Longer than a run (checkpoint, resume after SIGKILL), many hosts (shards), many devices (sharding)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import dynsim as ds

RUN = textwrap.dedent(
    """
    import sys
    import numpy as np
    import dynsim as ds

    def run(n_steps=4000, **kw):
        problem = ds.problems.rank1_saddle()
        dyn = ds.dynamics.saddle_modes(problem)
        return ds.simulate(dyn, grid={"lr": np.linspace(0.1, 1.5, 8), "mu": [0.1, 0.5]}, n_replicas=64,
                           n_steps=n_steps, seed=3, chunk_size=64, progress=False,
                           observables={"modes": ds.observables.final_state(),
                                        "ms": ds.observables.time_average(lambda m: m["sq_minus"], n_batches=4)},
                           **kw)

    if __name__ == "__main__":
        run(n_steps=int(sys.argv[2]), checkpoint=sys.argv[1])
    """
)


@pytest.fixture
def runner(tmp_path, monkeypatch):
    (tmp_path / "ckrun.py").write_text(RUN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import ckrun

    return tmp_path / "ckrun.py", ckrun.run


def _same(a: xr.Dataset, b: xr.Dataset):
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert ds.io.config(a) == ds.io.config(b)


def test_resume_after_sigkill_gives_the_uninterrupted_result(runner, tmp_path):
    script, run = runner
    folder = tmp_path / "ck"
    steps = 40_000
    proc = subprocess.Popen([sys.executable, str(script), str(folder), str(steps)])
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [f for f in os.listdir(folder) if f.endswith(".npz")] if folder.exists() else []
        if len(done) >= 3:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = sorted(f for f in os.listdir(folder) if f.endswith(".npz"))
    assert 3 <= len(partial) < 16, partial  # killed mid-way, no temporary files left as chunks
    resumed = run(n_steps=steps, checkpoint=folder)
    fresh = run(n_steps=steps)
    _same(resumed, fresh)
    assert len([f for f in os.listdir(folder) if f.endswith(".npz")]) == 16
    ds.io.save(resumed, tmp_path / "a.nc")
    ds.io.save(fresh, tmp_path / "b.nc")
    _same(ds.io.load(tmp_path / "a.nc"), ds.io.load(tmp_path / "b.nc"))


def test_a_different_configuration_is_refused(runner, tmp_path):
    _, run = runner
    run(n_steps=100, checkpoint=tmp_path / "ck")
    with pytest.raises(ValueError, match=r"belongs to a different run \(differs in \['n_steps'\]\)"):
        run(n_steps=200, checkpoint=tmp_path / "ck")


def test_shards_share_a_checkpoint(runner, tmp_path):
    _, run = runner
    folder = tmp_path / "ck"
    assert run(n_steps=300, checkpoint=folder, shard=(0, 3)) is None
    assert run(n_steps=300, checkpoint=folder, shard=(2, 3)) is None
    last = run(n_steps=300, checkpoint=folder, shard=(1, 3))  # the last shard finds every chunk and assembles
    _same(last, run(n_steps=300))
    with pytest.raises(ValueError, match="shard needs a checkpoint"):
        run(n_steps=300, shard=(0, 2))


def test_shards_that_start_together_cut_the_same_chunks(runner, tmp_path):
    # The chunk size each host picks depends on its free memory and devices: the first shard to start fixes it
    # for all, before any chunk exists (here: a first shard that fixed 32 while the others would pick 64).
    _, run = runner
    folder = tmp_path / "ck"
    folder.mkdir()
    first = ds.checkpoint.Checkpoint(folder, {"any": "config"})
    assert first.fix_chunk_size(0, 32) == 32 and first.fix_chunk_size(0, 64) == 32  # the first size wins
    for name in os.listdir(folder):
        if name != "chunk-size-0000.txt":
            os.remove(folder / name)
    assert run(n_steps=300, checkpoint=folder, shard=(0, 2)) is None
    last = run(n_steps=300, checkpoint=folder, shard=(1, 2))
    assert sorted(f for f in os.listdir(folder) if f.endswith(".npz"))[0].endswith("-000000032.npz")
    _same(last, run(n_steps=300))


def test_four_devices_give_bitwise_the_one_device_result(tmp_path):
    script = textwrap.dedent(
        """
        import jax, numpy as np, xarray as xr
        import dynsim as ds
        assert len(jax.devices()) == 4, jax.devices()
        problem = ds.problems.rank1_saddle(n_data=16, width=2)
        dyn = ds.dynamics.sgd(problem, batch_size=2)
        kw = dict(grid={"lr": np.linspace(0.1, 1.2, 6), "mu": [0.2, 0.7]}, n_replicas=20, n_steps=60,
                  record_every=20, observables={"ld": ds.observables.log_distance(problem.fixed_point),
                                                "s": ds.observables.final_state()}, progress=False)
        one = ds.simulate(dyn, **kw)
        four = ds.simulate(dyn, devices=4, chunk_size=96, **kw)
        xr.testing.assert_identical(one.drop_attrs(), four.drop_attrs())
        print("identical")
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "identical" in out.stdout


def test_bad_devices():
    with pytest.raises(ValueError, match="devices=99"):
        ds.simulate(ds.dynamics.gd(ds.problems.quadratic(1.0)), grid={"lr": [0.1]}, n_steps=2, devices=99)
    with pytest.raises(TypeError, match="devices must be"):
        ds.simulate(ds.dynamics.gd(ds.problems.quadratic(1.0)), grid={"lr": [0.1]}, n_steps=2, devices=["gpu"])


def test_checkpoint_chunks_are_complete_files(runner, tmp_path):
    _, run = runner
    first = run(n_steps=50, checkpoint=tmp_path / "ck", path=tmp_path / "out.nc")
    files = os.listdir(tmp_path / "ck")
    assert "config.json" in files and not any(f.endswith(".tmp") for f in files)
    with np.load(tmp_path / "ck" / sorted(f for f in files if f.endswith(".npz"))[0]) as z:
        assert z["index"].shape == (64,)
    # readable by the other users of a shared folder, as the umask says (mkstemp alone gave 0600)
    umask = os.umask(0)
    os.umask(umask)
    for f in [tmp_path / "out.nc", *(tmp_path / "ck" / f for f in files)]:
        assert os.stat(f).st_mode & 0o777 == 0o666 & ~umask, f
    # a resumed call says how much it read back; its elapsed time is its own
    assert first.attrs["resumed_trajectories"] == 0
    assert run(n_steps=50, checkpoint=tmp_path / "ck").attrs["resumed_trajectories"] == 16 * 64


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_jax_distributed_give_the_one_process_result(tmp_path):
    """experiments/cluster_sweep.py as two jax.distributed processes of 2 devices each, then as one."""
    script = os.path.join(os.path.dirname(__file__), "..", "experiments", "cluster_sweep.py")
    size = ["--lr-points", "6", "--mu-points", "4", "--replicas", "16", "--steps", "50", "--chunk-size", "16"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    address = f"127.0.0.1:{_free_port()}"
    many = tmp_path / "many"
    procs = [
        subprocess.Popen(
            [sys.executable, script, *size, "--results", str(many), "--out", str(many), "--coordinator", address]
            + ["--num-processes", "2", "--process-id", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert sum("assembled" in o[0] for o in outs) >= 1, outs
    chunks = [f for f in os.listdir(many / "checkpoints" / "cluster_sweep") if f.endswith(".npz")]
    assert len(chunks) == 24  # 6 x 4 cells x 16 replicas in chunks of 16 (one 8-lane block per device)

    one = tmp_path / "one"
    out = subprocess.run(
        [sys.executable, script, *size, "--results", str(one), "--out", str(one)],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    _same(ds.io.load(many / "cluster_sweep.nc"), ds.io.load(one / "cluster_sweep.nc"))


def test_checkpoint_of_another_program_is_refused(tmp_path):
    # Same arguments, different computation: an observable's function, a problem's constant.
    def run(curvature, power, folder):
        return ds.simulate(
            ds.dynamics.gd(ds.problems.quadratic(curvature), noise=[ds.dynamics.gaussian_noise(1.0)]),
            grid={"lr": [0.1]},
            n_replicas=16,
            n_steps=40,
            observables={"m": ds.observables.time_average(lambda th: th**power, n_batches=4)},
            checkpoint=folder,
            progress=False,
        )

    first = run(2.0, 2, tmp_path / "ck")
    again = run(2.0, 2, tmp_path / "ck")  # a new lambda with the same code resumes
    np.testing.assert_array_equal(first.m.values, again.m.values)
    for curvature, power in [(2.0, 4), (5.0, 2)]:
        with pytest.raises(ValueError, match="different program"):
            run(curvature, power, tmp_path / "ck")


def test_checkpoint_whose_chunks_lack_an_output_is_refused(tmp_path):
    # The same compiled program, but finalize (host side, in no jaxpr) gives one more output: chunks saved by the
    # first version would leave the new output at zero for their trajectories, so the checkpoint is refused.
    def running_sum(extra: bool) -> ds.observables.Observable:
        def finalize(acc, status, ctx):
            out = {"": ((), np.asarray(acc))}
            return out | {"half": ((), np.asarray(acc) / 2)} if extra else out

        return ds.observables.Observable(
            "running_sum",
            init=lambda view, ctx: jnp.zeros(()),
            update=lambda acc, view, t, ctx: acc + view.params[0],
            finalize=finalize,
        )

    def run(extra):
        return ds.simulate(
            ds.dynamics.gd(ds.problems.quadratic(1.0, theta0=1.0)),
            grid={"lr": [0.5]},
            n_steps=10,
            observables={"s": running_sum(extra)},
            checkpoint=tmp_path / "ck",
            progress=False,
        )

    first = run(False)
    np.testing.assert_allclose(first.s.item(), sum(0.5**t for t in range(1, 11)), rtol=1e-6)
    np.testing.assert_array_equal(run(False).s.values, first.s.values)  # the same code resumes
    with pytest.raises(ValueError, match="different program"):
        run(True)


def test_a_call_that_fails_its_checks_leaves_nothing_that_refuses_the_corrected_one(tmp_path):
    def run(name):
        return ds.simulate(
            ds.dynamics.gd(ds.problems.quadratic(1.0, theta0=1.0)),
            grid={"lr": [0.5]},
            n_steps=4,
            observables={"d": ds.observables.diverged(), name: ds.observables.trajectory()},
            checkpoint=tmp_path / "ck",
            progress=False,
        )

    with pytest.raises(ValueError, match="d_step"):
        run("d_step")  # collides with diverged's output d_step
    assert "config.json" not in os.listdir(tmp_path / "ck")
    np.testing.assert_allclose(run("traj").traj.values[..., -1], 0.5**4)  # theta_4 of x <- x / 2


def test_a_function_given_to_an_optimizer_resumes_in_another_process(tmp_path):
    # optax.adamw's mask is fixed when the dynamics is built; the checkpoint names it without its memory
    # address, which changes from one process (here: one lambda) to the next
    import optax

    def run():
        dyn = ds.dynamics.from_optax(ds.problems.quadratic(1.0, theta0=1.0), optax.adamw, mask=lambda p: True)
        assert "mask" not in dyn.hyperparams  # not a grid axis
        return ds.simulate(dyn, grid={"lr": [0.1]}, n_steps=3, checkpoint=tmp_path / "ck", progress=False)

    first = run()
    assert " at 0x" not in (tmp_path / "ck" / "config.json").read_text()
    np.testing.assert_array_equal(run().diverged_step.values, first.diverged_step.values)
