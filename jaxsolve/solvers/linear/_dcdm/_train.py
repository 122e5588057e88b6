r"""Training the DCDM network (unsupervised: it needs only the operator ``A``).

Recipe of Kaneda et al. (ICML 2023), section 4:

1. Lanczos with full reorthogonalisation on the obstacle-free Dirichlet Laplacian
   of the training grid (from a seeded random start) gives ``m`` Ritz pairs
   ``(theta_i, y_i)``, sorted by ``theta``.
2. Every training vector is ``b = sum_i c_i y_i / ||.||`` with ``c_i ~ N(0, 1)``,
   multiplied by 9 on the low-frequency half of the Ritz vectors (the error modes
   that are hard for Krylov methods are the smooth ones).
3. The loss is scale-invariant: ``q = f(b)``, ``x = q (q.b) / (q.A q)`` (the exact
   line search along ``q``), ``loss = ||b - A x||^2`` averaged over the batch.
4. Adam (optax), jitted steps, a seeded data stream: step ``k`` draws its batch from
   ``fold_in(key, k)``, so a run resumed from a checkpoint continues the same stream.

The paper trains with a learning rate of 1e-4 for many hours on a GPU; to fit on a
CPU the default here is 1e-3 with a cosine decay, and far fewer steps.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ...._checks import check_positive_int
from ....problems.obstacles import poisson_obstacles
from ._io import load_checkpoint, load_model, save_checkpoint, save_model
from ._model import DCDMNet

__all__ = ["train", "lanczos_ritz", "training_vectors", "main"]


def lanczos_ritz(matvec, n: int, m: int, *, seed: int = 0):
    """``m`` steps of Lanczos with full reorthogonalisation (float64, NumPy) on
    the symmetric ``matvec`` acting on length-``n`` vectors. Returns the Ritz values
    (ascending, shape ``(m,)``) and vectors (``(n, m)``, orthonormal columns)."""
    rng = np.random.default_rng(seed)
    q = np.zeros((m, n))
    alpha, beta = np.zeros(m), np.zeros(m)
    v = rng.normal(size=n)
    v /= np.linalg.norm(v)
    for j in range(m):
        q[j] = v
        w = np.array(matvec(v), dtype=np.float64)  # a writable copy
        alpha[j] = v @ w
        # full reorthogonalisation, two passes ("twice is enough", Parlett)
        for _ in range(2):
            w -= q[: j + 1].T @ (q[: j + 1] @ w)
        if j + 1 < m:
            beta[j] = np.linalg.norm(w)
            if beta[j] < 1e-10:  # invariant subspace: the spectrum is exhausted
                m = j + 1
                q, alpha, beta = q[:m], alpha[:m], beta[:m]
                break
            v = w / beta[j]
    t = np.diag(alpha) + np.diag(beta[: m - 1], 1) + np.diag(beta[: m - 1], -1)
    theta, s = np.linalg.eigh(t)
    return theta, q.T @ s


def training_vectors(
    ritz_vectors, key, batch: int, *, low_weight: float = 9.0, noise: int = 0
):
    """A batch of normalised training right-hand sides (see the module docstring).
    ``ritz_vectors``: ``(n, m)``, columns sorted by ascending Ritz value. The
    last ``noise`` of the ``batch`` vectors are white noise instead: the Ritz
    vectors of a short Lanczos run resolve the ends of the spectrum, and a model
    trained on them alone leaves the middle of it unconverged."""
    n, m = ritz_vectors.shape
    ritz_key, noise_key = jax.random.split(key)
    c = jax.random.normal(ritz_key, (batch - noise, m), ritz_vectors.dtype)
    weight = jnp.where(jnp.arange(m) < m // 2, low_weight, 1.0)
    b = (c * weight) @ ritz_vectors.T
    if noise:
        white = jax.random.normal(noise_key, (noise, n), ritz_vectors.dtype)
        b = jnp.concatenate([b, white])
    return b / jnp.linalg.norm(b, axis=1, keepdims=True)


def _optimizer(training: dict):
    schedule = optax.cosine_decay_schedule(
        training["lr"], max(1, training["steps"]), alpha=0.01
    )
    return optax.adam(schedule)


def _loss(model, operator, b_flat, shape):
    def one(b):
        q = model(b.reshape(shape))
        aq = operator(q)
        q, aq = q.reshape(-1), aq.reshape(-1)
        alpha = jnp.vdot(q, b) / jnp.vdot(q, aq)
        r = b - alpha * aq
        return jnp.vdot(r, r)

    return jnp.mean(jax.vmap(one)(b_flat))


def train(
    dim: int = 2,
    grid: int = 64,
    *,
    steps: int = 4000,
    batch: int = 16,
    width: int = 16,
    coarsest: int = 4,
    lr: float = 1e-3,
    ritz: int = 400,
    seed: int = 0,
    noise: int = 0,
    init=None,
    checkpoint=None,
    checkpoint_every: int = 100,
    max_new_steps: int | None = None,
    progress: bool = True,
) -> tuple[DCDMNet, list]:
    """Train a DCDM network; returns ``(model, losses)`` (losses of the steps run
    in this call). With ``checkpoint`` (a path), the state is saved every
    ``checkpoint_every`` steps and at the end, and a call with the same
    configuration resumes from it. ``max_new_steps`` stops this call early
    (a long training split over several runs: each resumes the checkpoint).
    ``noise``: how many of the ``batch`` vectors are white noise (see
    :func:`training_vectors`). ``init``: a model file to start from instead of
    a random initialisation (fine-tuning, e.g. a model trained on a small grid
    continued on a larger one); its configuration must match."""
    for name, v in [("grid", grid), ("steps", steps), ("batch", batch), ("ritz", ritz)]:
        check_positive_int(v, name)
    training = {
        "dim": dim, "grid": grid, "steps": steps, "batch": batch, "lr": lr,
        "ritz": ritz, "seed": seed,
    }  # fmt: skip
    if not 0 <= noise <= batch:
        raise ValueError(f"`noise` must be in [0, batch={batch}], got {noise}")
    # recorded only when set: checkpoints of the plain recipe stay resumable
    if noise:
        training["noise"] = noise
    key = jax.random.key(seed)
    init_key, data_key = jax.random.split(key)
    model = DCDMNet(dim, width, coarsest, key=init_key)
    if init is not None:
        model = load_model(init, like=model)
        training["init"] = pathlib.Path(init).name
    optimizer = _optimizer(training)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    start = 0
    if checkpoint is not None and pathlib.Path(checkpoint).exists():
        model, opt_state, start = load_checkpoint(
            checkpoint, model, opt_state, training
        )

    shape = (grid,) * dim
    operator = poisson_obstacles(np.zeros(shape, bool), dtype=jnp.float32)
    apply = jax.jit(lambda v: operator(v.reshape(shape)).reshape(-1))
    n = grid**dim
    m = min(ritz, n)
    _, ritz_vectors = lanczos_ritz(
        lambda v: np.asarray(apply(jnp.asarray(v, jnp.float32)), np.float64),
        n, m, seed=seed,
    )  # fmt: skip
    ritz_vectors = jnp.asarray(ritz_vectors, jnp.float32)

    @eqx.filter_jit
    def step(model, opt_state, k, ritz_vectors):
        b = training_vectors(
            ritz_vectors, jax.random.fold_in(data_key, k), batch, noise=noise
        )
        loss, grads = eqx.filter_value_and_grad(_loss)(model, operator, b, shape)
        updates, opt_state = optimizer.update(
            grads, opt_state, eqx.filter(model, eqx.is_array)
        )
        return eqx.apply_updates(model, updates), opt_state, loss

    losses = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc=f"DCDM {dim}-D {grid}^{dim}")
    stop = steps if max_new_steps is None else min(steps, start + max_new_steps)
    for k in range(start, stop):
        model, opt_state, loss = step(model, opt_state, jnp.asarray(k), ritz_vectors)
        losses.append(float(loss))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3e}")
        last = k + 1 == stop
        if checkpoint is not None and ((k + 1) % checkpoint_every == 0 or last):
            save_checkpoint(checkpoint, model, opt_state, k + 1, training)
    if bar is not None:
        bar.close()
    return model, losses


def main(argv=None) -> DCDMNet:
    parser = argparse.ArgumentParser(
        prog="python -m jaxsolve.train_dcdm",
        description="Train the DCDM network on the obstacle-free Laplacian.",
    )
    parser.add_argument("--dim", type=int, default=2, choices=(2, 3))
    parser.add_argument("--grid", type=int, default=64, help="cells a side")
    parser.add_argument("--out", required=True, help="where to write the model")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--coarsest", type=int, default=4, help="coarsest grid size")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ritz", type=int, default=400, help="Lanczos/Ritz vectors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise", type=int, default=0, help="white-noise vectors in each batch"
    )
    parser.add_argument(
        "--init",
        default=None,
        help="start from this model file (fine-tuning) instead of a random one",
    )
    parser.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default: OUT.ckpt)"
    )
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument(
        "--max-new-steps",
        type=int,
        default=None,
        help="stop after this many steps (a later run resumes the checkpoint)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or args.out + ".ckpt"
    t0 = time.perf_counter()
    model, losses = train(
        args.dim, args.grid, steps=args.steps, batch=args.batch, width=args.width,
        coarsest=args.coarsest, lr=args.lr, ritz=args.ritz, seed=args.seed,
        noise=args.noise, init=args.init, checkpoint=checkpoint,
        checkpoint_every=args.checkpoint_every, max_new_steps=args.max_new_steps,
        progress=not args.no_progress,
    )  # fmt: skip
    final = float(np.mean(losses[-50:])) if losses else float("nan")
    argv = sys.argv[1:] if argv is None else argv
    save_model(
        args.out, model, grid=args.grid, steps=args.steps, batch=args.batch,
        lr=args.lr, ritz=args.ritz, seed=args.seed, noise=args.noise,
        init=args.init and pathlib.Path(args.init).name, final_loss=final,
        command="python -m jaxsolve.train_dcdm " + " ".join(argv),
    )  # fmt: skip
    print(
        f"wrote {args.out} ({time.perf_counter() - t0:.0f} s, "
        f"mean loss of the last steps {final:.3e})"
    )
    return model


if __name__ == "__main__":
    main()
