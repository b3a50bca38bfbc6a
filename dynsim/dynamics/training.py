"""Update maps of gradient methods on a :class:`~dynsim.problems.Problem`: ``gd``, ``sgd``, ``from_optax``.

All three share one gradient oracle: draw the minibatch (or take the full dataset),
apply minibatch noise, differentiate the mean per-sample loss, apply gradient noise.
They differ only in what they do with the gradient ``g``:

* ``gd`` / ``sgd``: ``theta <- theta - lr * g``;
* ``from_optax``: ``updates, s <- opt.update(g, s, theta)``; ``theta <- theta + updates``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynsim import prng
from dynsim._fusion import materialize
from dynsim._validate import check_int, stable_repr
from dynsim.problems.base import Problem, batch_loss, draw_dataset

from .base import REQUIRED, Dynamics, TrainState
from .noise import Noise

__all__ = ["gd", "sgd", "from_optax"]

FULL_BATCH = None


def _check_noise(problem: Problem, noise: Sequence[Noise]) -> tuple[Noise, ...]:
    noise = tuple(noise)
    for n in noise:
        if not isinstance(n, Noise):
            raise TypeError(f"noise must be a sequence of dynsim.dynamics.Noise, got {n!r}")
        if n.kind == "batch":
            if problem.kind == "deterministic":
                raise ValueError(f"{n.name} noise acts on data, but problem {problem.name!r} has none")
            shape = problem.dataset if problem.dataset is not None else jax.eval_shape(problem.sample, prng.key(0))
            if not (isinstance(shape, Mapping) and "y" in shape):
                raise ValueError(
                    f"{n.name} noise needs samples with a 'y' entry; problem {problem.name!r} "
                    f"samples have {jax.tree_util.tree_structure(shape)}"
                )
        if n.name == "multiplicative" and problem.kind == "stream":
            raise ValueError(
                "multiplicative noise needs the training objective F(theta), which a stream "
                f"(n_data=None) does not have; give problem {problem.name!r} a finite n_data"
            )
    names = [name for n in noise for name in n.hyperparams]
    if len(set(names)) != len(names):
        raise ValueError(
            f"noise hyperparameter names collide: {names}; pass name=... to tell them apart (a noise's shape "
            "parameter, such as df or alpha, is then named after it: name_df, name_alpha)"
        )
    return noise


def _hyperparams(problem: Problem, noise: tuple[Noise, ...], own: Mapping[str, Any]) -> dict[str, Any]:
    hyper = dict(own)
    for source in (problem.hyperparams, *(n.hyperparams for n in noise)):
        for name, default in source.items():
            if name in hyper:
                raise ValueError(f"hyperparameter {name!r} is defined twice")
            hyper[name] = default
    if problem.kind == "finite":
        hyper["n_data"] = problem.n_data
    return hyper


def trajectory_data(problem: Problem, own_data, hp):
    """The training data of one trajectory: its own dataset (``per_replica_data``), the run's shared
    dataset (``hp["data"]``), or ``None`` (a stream or a data-free problem)."""
    if problem.kind == "finite" and problem.per_replica_data:
        return own_data
    if problem.kind == "finite":
        return hp["data"]
    return None


def _data_of(problem: Problem):
    return lambda state, hp: trajectory_data(problem, state.data, hp)


def _shared_data(problem: Problem):
    if problem.kind == "finite" and not problem.per_replica_data:
        return lambda key, hp: draw_dataset(problem, key, hp["n_data"])
    return None


def _init_params_and_data(problem: Problem, key, hp):
    """Initial parameters, and the trajectory's own dataset when it has one."""
    if problem.kind == "finite" and problem.per_replica_data:
        k_params, k_data = jax.random.split(key)
        return problem.init(k_params, hp), draw_dataset(problem, k_data, hp["n_data"])
    return problem.init(key, hp), ()


def _minibatch(problem: Problem, key, data, hp, batch_size, replace: bool):
    if problem.kind == "deterministic":
        return None
    if problem.kind == "stream":
        # stored once, whatever their size: several parts of the step read the fresh samples
        return materialize(draw_dataset(problem, key, batch_size), small=None)
    if batch_size is FULL_BATCH:
        return data
    n = hp["n_data"]
    if replace:
        idx = prng.uniform_index(key, (batch_size,), n)
    else:
        idx = jax.random.choice(key, n, (batch_size,), replace=False)
    return jax.tree_util.tree_map(lambda a: a[idx], data)


def _gradient_oracle(problem: Problem, noise: tuple[Noise, ...], replace: bool):
    """``grad(key, params, data, hp) -> (loss, g)``: the minibatch loss and (noisy) gradient of one step.

    The minibatch is drawn from ``key`` itself when there is no noise, otherwise from the
    first of ``split(key, 1 + len(noise))`` (noise ``i`` uses key ``i + 1``).
    """

    def grad(key, params, data, hp):
        batch_size = hp.get("batch_size", FULL_BATCH)
        keys = jax.random.split(key, 1 + len(noise)) if noise else [key]
        batch = _minibatch(problem, keys[0], data, hp, batch_size, replace)
        for k, n in zip(keys[1:], noise):
            if n.kind == "batch":
                batch = n.apply(k, batch, hp)
        value, g = jax.value_and_grad(lambda p: batch_loss(problem, p, batch, hp))(params)

        def objective():
            return batch_loss(problem, params, data if problem.kind == "finite" else None, hp)

        for k, n in zip(keys[1:], noise):
            if n.kind == "gradient":
                g = n.apply(k, g, hp, objective)
        return value, g

    return grad


def _check_batch(problem: Problem, replace: bool):
    def check(hp):
        if problem.dataset is not None:
            size = len(jax.tree_util.tree_leaves(problem.dataset)[0])
            n = hp.get("n_data")
            if n is None or isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= size:
                # indices beyond the dataset were clamped to its last example by the gather
                raise ValueError(
                    f"n_data must be an integer in [1, {size}] for problem {problem.name!r}, whose fixed dataset "
                    f"has {size} examples; got n_data={n!r}"
                )
        if "batch_size" not in hp:
            return
        s = check_int("batch_size", hp["batch_size"], minimum=1)
        if problem.kind == "deterministic" and s != 1:
            raise ValueError(
                f"problem {problem.name!r} has no data: every batch_size gives the same run (GD plus the injected "
                f"noise), got batch_size={s}"
            )
        if problem.batch_coupled and s < 2:
            raise ValueError(
                f"problem {problem.name!r} couples the examples of a batch (batch_coupled=True, e.g. batch "
                f"normalization): a minibatch needs 2 or more samples, got batch_size={s}"
            )
        n = hp.get("n_data")
        if not replace and n is not None and s > n:
            raise ValueError(
                f"batch_size={s} exceeds n_data={n}: without replacement a batch holds at most "
                "n_data distinct samples (use replace=True or a smaller batch)"
            )
        if n is not None:
            check_int("n_data", n, minimum=1)

    return check


def problem_dynamics(problem: Problem, init, step, own_hyper, static, *, noise=(), replace=True, name) -> Dynamics:
    """A :class:`Dynamics` training on ``problem``: its hyperparameters (own, the problem's and the
    noises'), static axes (plus ``n_data`` for a finite dataset), shared data and data access."""
    if problem.kind == "finite":
        static = set(static) | {"n_data"}
    return Dynamics(
        init=init,
        step=step,
        hyperparams=_hyperparams(problem, tuple(noise), own_hyper),
        static=frozenset(static),
        shared_data=_shared_data(problem),
        params_of=lambda state: state.params,
        data_of=_data_of(problem),
        problem=problem,
        check=_checks(_check_batch(problem, replace), *(n.check for n in noise)),
        name=name,
    )


def _checks(*checks):
    """One ``check(hp)`` running each of ``checks`` (``None``s skipped)."""

    def check(hp):
        for c in checks:
            if c is not None:
                c(hp)

    return check


def _build(problem, noise, replace, own_hyper, static, init, update, name, track_batch_loss=False) -> Dynamics:
    oracle = _gradient_oracle(problem, noise, replace)
    data_of = _data_of(problem)

    def step(state: TrainState, key, hp) -> TrainState:
        value, g = oracle(key, state.params, data_of(state, hp), hp)
        new = update(state, g, hp)
        return new._replace(batch_loss=value) if track_batch_loss else new

    if track_batch_loss:
        base_init = init

        def init(key, hp):
            return base_init(key, hp)._replace(batch_loss=jnp.zeros((), jnp.result_type(float)))

    return problem_dynamics(problem, init, step, own_hyper, static, noise=noise, replace=replace, name=name)


def _sgd_update(state: TrainState, g, hp) -> TrainState:
    lr = hp["lr"]
    params = jax.tree_util.tree_map(lambda p, gi: p - lr * gi, state.params, g)
    return state._replace(params=params)


def _sgd_init(problem: Problem):
    def init(key, hp) -> TrainState:
        params, data = _init_params_and_data(problem, key, hp)
        return TrainState(params=params, data=data)

    return init


def sgd(
    problem: Problem,
    batch_size: int = 1,
    *,
    replace: bool = True,
    noise: Sequence[Noise] = (),
    lr: float = REQUIRED,
    track_batch_loss: bool = False,
) -> Dynamics:
    """Minibatch SGD: ``theta <- theta - (lr / S) sum_{j in B_t} grad l(theta; x_j)`` (seed 004, eq. 1).

    The batch ``B_t`` holds ``S = batch_size`` samples: i.i.d. uniform indices into the
    finite dataset with ``replace=True`` (the law of seed 004's proofs), ``S`` distinct
    indices with ``replace=False``, or ``S`` fresh draws for a stream. On a data-free
    problem it is GD plus the injected noise.

    Hyperparameters: ``lr`` (traced), the problem's and the noises' (traced),
    ``batch_size`` and ``n_data`` (static: one compilation per value).
    ``track_batch_loss=True`` keeps the minibatch loss of the last step in the state
    (``state.batch_loss``), whose epoch means are seed 000's eq. (2) loss; it adds a state
    coordinate that tangent-space Lyapunov tools would see (with exponent ``-inf``).
    """
    check_int("batch_size", batch_size, minimum=1)
    noise = _check_noise(problem, noise)
    return _build(
        problem,
        noise,
        replace,
        {"lr": lr, "batch_size": batch_size},
        {"batch_size"},
        _sgd_init(problem),
        _sgd_update,
        f"sgd({problem.name}, batch_size={batch_size}, replace={replace})",
        track_batch_loss,
    )


def gd(problem: Problem, *, noise: Sequence[Noise] = (), lr: float = REQUIRED) -> Dynamics:
    """Full-batch gradient descent ``theta <- theta - lr grad F(theta)``, ``F`` the mean loss over the dataset."""
    if problem.kind == "stream":
        raise ValueError(
            f"gd needs a finite dataset or a data-free problem; problem {problem.name!r} is a "
            "stream (n_data=None): use sgd, or give it a finite n_data"
        )
    noise = _check_noise(problem, noise)
    return _build(problem, noise, True, {"lr": lr}, set(), _sgd_init(problem), _sgd_update, f"gd({problem.name})")


def batch_size_axis(problem: Problem, batch_size: int | None, own: dict[str, Any]) -> set[str]:
    """Add ``batch_size`` to the hyperparameters ``own`` as a static axis (returned), or check that
    ``batch_size=None`` (the full dataset) has a finite dataset to take."""
    if batch_size is FULL_BATCH:
        if problem.kind == "stream":
            raise ValueError("batch_size=None (full batch) needs a finite dataset or a data-free problem")
        return set()
    check_int("batch_size", batch_size, minimum=1)
    own["batch_size"] = batch_size
    return {"batch_size"}


def _optimizer_hyperparams(make_optimizer: Callable) -> tuple[dict[str, Any], set[str]]:
    """The numeric arguments of ``make_optimizer`` (hyperparameters, with their defaults) and the
    names of the others (flags such as ``nesterov``, dtypes, functions: fixed when the dynamics is built)."""
    if isinstance(make_optimizer, optax.GradientTransformation):
        raise TypeError(
            "make_optimizer must be the optimizer's constructor, e.g. optax.adam, not an optimizer built from it "
            "(optax.adam(1e-3)): dynsim calls it with each cell's hyperparameters, the learning rate included"
        )
    try:
        signature = inspect.signature(make_optimizer)
    except (TypeError, ValueError) as err:
        raise TypeError(f"make_optimizer must be a callable with a signature: {err}") from err
    hyper: dict[str, Any] = {}
    fixed: set[str] = set()
    for name, p in signature.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        key = "lr" if name == "learning_rate" else name
        if name.endswith("dtype"):  # mu_dtype, accumulator_dtype: fixed like flags, whatever their default
            fixed.add(name)
        elif p.default is inspect.Parameter.empty:
            hyper[key] = REQUIRED
        elif p.default is None or (isinstance(p.default, (int, float)) and not isinstance(p.default, bool)):
            hyper[key] = p.default
        else:
            fixed.add(name)
    if "lr" not in hyper:
        raise TypeError("make_optimizer must take a 'learning_rate' argument (as optax's optimizers do)")
    return hyper, fixed


def _is_number(value: Any) -> bool:
    """A number (a hyperparameter: one per cell, a grid axis), not an array of them (one threshold per
    coordinate), a function, flag or string (fixed when the dynamics is built)."""
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - whatever cannot be an array is not a number
        return False
    return array.ndim == 0 and array.dtype.kind in "iuf"


def from_optax(
    problem: Problem,
    make_optimizer: Callable[..., optax.GradientTransformation],
    batch_size: int | None = 1,
    *,
    replace: bool = True,
    noise: Sequence[Noise] = (),
    track_batch_loss: bool = False,
    **defaults: Any,
) -> Dynamics:
    """Any optax optimizer on minibatch gradients, its state carried in the trajectory state; any whose
    ``update(grads, state, params)`` needs nothing else (not ``optax.lbfgs``, whose line search takes the loss, nor
    ``optax.lookahead``, whose parameters are a pair of fast and slow weights).

    ``make_optimizer`` is an optax constructor such as ``optax.adam`` or
    ``optax.sgd``; its numeric arguments become hyperparameters (``learning_rate`` is
    named ``lr``, like everywhere in dynsim). The optimizer is built inside ``init`` and
    ``step`` from the cell's traced values, so a grid over them never recompiles, and the
    state holds only the optimizer's own dynamics (``optax.inject_hyperparams`` would store
    the hyperparameters in it, adding constant directions, with exponent 0, to every
    Lyapunov spectrum). Arguments whose default is ``None`` (such as ``optax.sgd``'s
    ``momentum``) are passed only when given. ``defaults`` sets defaults, e.g.
    ``from_optax(p, optax.adam, b1=0.8)``; arguments whose default is not a number (flags such as
    ``optax.sgd``'s ``nesterov``), and any argument given something other than a number
    (``optax.adamw``'s ``mask=fn``), are fixed by ``defaults`` when the dynamics is built, not
    hyperparameters: ``from_optax(p, optax.sgd, momentum=0.9, nesterov=True)``; so are arrays (one
    threshold per coordinate) and a schedule given as the learning rate
    (``learning_rate=optax.exponential_decay(0.1, 100, 0.5)``: then ``lr`` is no grid axis). ``batch_size=None``
    uses the full dataset (GD with this optimizer).

    With ``make_optimizer=optax.sgd`` the iterates equal :func:`sgd`'s bit for bit.
    ``track_batch_loss`` as in :func:`sgd`.
    """
    noise = _check_noise(problem, noise)
    own, fixed = _optimizer_hyperparams(make_optimizer)
    if "learning_rate" in defaults:  # optax's name for what dynsim calls lr
        if "lr" in defaults:
            raise ValueError("give lr or learning_rate, not both")
        defaults["lr"] = defaults.pop("learning_rate")
    unknown = sorted(set(defaults) - set(own) - fixed)
    if unknown:
        raise ValueError(
            f"unknown optimizer argument(s) {unknown}; {make_optimizer!r} takes {sorted(own) + sorted(fixed)}"
        )
    # an argument given something other than a number (optax.adamw's mask=fn) is fixed, as a flag is
    constants = {name: value for name, value in defaults.items() if name in fixed or not _is_number(value)}
    own.update({name: value for name, value in defaults.items() if name not in constants})
    for name in constants:
        own.pop(name, None)
    optimizer_names = tuple(own)
    static = batch_size_axis(problem, batch_size, own)

    def optimizer(hp) -> optax.GradientTransformation:
        kwargs = {n: hp[n] for n in optimizer_names if hp[n] is not None} | constants
        return make_optimizer(**{("learning_rate" if n == "lr" else n): v for n, v in kwargs.items()})

    def init(key, hp) -> TrainState:
        params, data = _init_params_and_data(problem, key, hp)
        return TrainState(params=params, opt_state=optimizer(hp).init(params), data=data)

    def update(state: TrainState, g, hp) -> TrainState:
        updates, opt_state = optimizer(hp).update(g, state.opt_state, state.params)
        return state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)

    def check_values(hp) -> None:
        """Build the optimizer with each grid value of each of its hyperparameters as a Python number (the
        others at their first value): its constructor's own checks, such as :mod:`dynsim.optim`'s
        thresholds > 0, then see every value, which a traced one would pass unchecked."""
        values = {n: [v.item() for v in np.ravel(hp[n])] if isinstance(hp[n], np.ndarray) else [hp[n]] for n in own}
        base = {n: v[0] for n, v in values.items()}
        for name in optimizer_names:
            for value in values[name]:
                hp_one = {**base, name: value}
                try:
                    optimizer(hp_one)
                except ValueError as err:
                    given = ", ".join(f"{n}={hp_one[n]!r}" for n in optimizer_names if hp_one[n] is not None)
                    raise ValueError(f"{opt_name} refuses {given}: {err}") from err

    opt_name = getattr(make_optimizer, "__name__", "optimizer")
    if constants:
        opt_name += "(" + ", ".join(f"{k}={stable_repr(v)}" for k, v in sorted(constants.items())) + ")"
    dyn = _build(
        problem,
        noise,
        replace,
        own,
        static,
        init,
        update,
        f"from_optax({problem.name}, {opt_name}, batch_size={batch_size})",
        track_batch_loss,
    )
    return dyn._replace(check=_checks(dyn.check, check_values))
