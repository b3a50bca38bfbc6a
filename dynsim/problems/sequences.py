"""Token sequences and a small attention network: the noise-shape study of seed 002 (thesis Sec. 4.3, Fig. 4-4).

The thesis compares the gradient noise of BERT ("Attention") with that of the same network with
its self-attention removed ("ResNet"), on Wikipedia and on Gaussian inputs. Here the data are
token sequences drawn from a Markov chain with Zipf-distributed transitions
(:func:`zipf_markov_tokens`), or normalized Gaussian vectors in place of the token embeddings,
and the task is to predict the last token of each sequence from the others
(:func:`sequence_classifier`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dynsim._validate import check_int, check_positive

from .base import Problem
from .classification import cross_entropy

__all__ = ["zipf_markov_tokens", "gaussian_inputs", "sequence_classifier"]


def zipf_markov_tokens(
    n: int, length: int, vocab: int = 64, *, exponent: float = 1.1, context: float = 0.5, seed: int = 0
) -> np.ndarray:
    """``n`` sequences of ``length`` tokens from a Markov chain with Zipf statistics, ``(n, length)`` int32.

    Each token is drawn, with probability ``1 - context``, from the unigram law ``p(j) = j^(-s) / H``
    (``s = exponent``, ``H = sum_r r^(-s)``: word frequencies of natural text follow it with ``s``
    near 1), and otherwise from a law that depends on the previous token ``i``, ``p_i(j) =
    r_i(j)^(-s) / H`` with ``r_i`` a random ranking of the vocabulary drawn for each ``i``. The
    first token is drawn from the unigram law. The marginal frequencies are Zipf-like (rare
    tokens stay rare) and the last token depends on the one before it.
    """
    n = check_int("n", n, minimum=1)
    length = check_int("length", length, minimum=2)
    vocab = check_int("vocab", vocab, minimum=2)
    s = check_positive("exponent", exponent)
    if not 0 <= context <= 1:
        raise ValueError(f"context must be a probability in [0, 1], got {context!r}")
    rng = np.random.default_rng(seed)
    zipf = np.arange(1, vocab + 1, dtype=float) ** -s
    zipf /= zipf.sum()
    ranked = np.stack([zipf[np.argsort(rng.permutation(vocab))] for _ in range(vocab)])
    rows = np.vstack([(1 - context) * zipf + context * ranked, zipf])  # last row: the first token
    cumulative = np.cumsum(rows, axis=1)
    cumulative[:, -1] = 1.0
    tokens = np.empty((n, length), dtype=np.int32)
    state = np.full(n, vocab)
    for t in range(length):
        u = rng.random(n)
        state = np.minimum((u[:, None] > cumulative[state]).sum(axis=1), vocab - 1)
        tokens[:, t] = state
    return tokens


def gaussian_inputs(n: int, length: int, width: int, *, seed: int = 0) -> np.ndarray:
    """``(n, length, width)`` float32 vectors uniform on the unit sphere: the "Gaussian input" of Fig. 4-4.

    Normalized Gaussian draws, ``z / |z|`` with ``z ~ N(0, I_width)``, one per position, fed to the
    network in place of its token embeddings.
    """
    n, length, width = (check_int(k, v, minimum=1) for k, v in (("n", n), ("length", length), ("width", width)))
    z = np.random.default_rng(seed).standard_normal((n, length, width))
    return (z / np.linalg.norm(z, axis=-1, keepdims=True)).astype(np.float32)


class _Block(nn.Module):
    width: int
    heads: int
    attention: bool

    @nn.compact
    def __call__(self, h):
        if self.attention:
            h = h + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attention")(nn.LayerNorm()(h))
        z = nn.Dense(4 * self.width, name="up")(nn.LayerNorm()(h))
        return h + nn.Dense(self.width, name="down")(jax.nn.gelu(z))


class _SequenceModel(nn.Module):
    vocab: int
    n_classes: int
    width: int
    heads: int
    depth: int
    attention: bool
    embed: bool

    @nn.compact
    def __call__(self, x):
        h = nn.Embed(self.vocab, self.width, name="embedding")(x) if self.embed else x
        position = self.param("position", nn.initializers.normal(0.02), (h.shape[-2], self.width))
        h = h + position
        for i in range(self.depth):
            h = _Block(self.width, self.heads, self.attention, name=f"block{i}")(h)
        return nn.Dense(self.n_classes, name="head")(nn.LayerNorm()(h)[..., -1, :])


def sequence_classifier(
    x,
    y,
    *,
    vocab: int | None = None,
    n_classes: int | None = None,
    attention: bool = True,
    width: int = 32,
    heads: int = 4,
    depth: int = 2,
) -> Problem:
    """A pre-LayerNorm transformer (flax) that reads a sequence and predicts a class: ``l = CE(f(x), y)``.

    ``x``: tokens ``(N, T)`` (int; embedded by a learned ``vocab x width`` table) or vectors
    ``(N, T, width)`` (float; used as they are, e.g. :func:`gaussian_inputs`). A learned position
    embedding is added, then ``depth`` blocks ``h <- h + Attn(LN(h))``, ``h <- h + MLP(LN(h))``
    (GELU, hidden ``4 width``), and a linear head on the last position. ``attention=False``
    removes the attention sublayers: the thesis's "ResNet" (Fig. 4-4), in which each position sees
    only itself. Flax's default initialisation; no weight decay.
    """
    x = np.asarray(x)
    y = np.asarray(y, dtype=np.int32)
    embed = np.issubdtype(x.dtype, np.integer)
    if embed:
        if x.ndim != 2:
            raise ValueError(f"token inputs must be (N, T), got shape {x.shape}")
        x = x.astype(np.int32)
        vocab = int(x.max()) + 1 if vocab is None else check_int("vocab", vocab, minimum=int(x.max()) + 1)
    else:
        if x.ndim != 3 or x.shape[-1] != width:
            raise ValueError(f"vector inputs must be (N, T, width={width}), got shape {x.shape}")
        x = x.astype(np.float32)
        vocab = 0
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must be (N,) with N = {x.shape[0]}, got shape {y.shape}")
    n_classes = int(y.max()) + 1 if n_classes is None else check_int("n_classes", n_classes, minimum=int(y.max()) + 1)
    width, heads, depth = (
        check_int(k, v, minimum=1) for k, v in (("width", width), ("heads", heads), ("depth", depth))
    )
    if attention and width % heads:
        raise ValueError(f"width={width} must be a multiple of heads={heads}")
    model = _SequenceModel(vocab, n_classes, width, heads, depth, bool(attention), embed)

    def loss(params, s, hp):
        return cross_entropy(model.apply({"params": params}, s["x"]), s["y"])

    def init(key, hp):
        params = model.init(key, jnp.asarray(x[0]))["params"]
        return jax.tree_util.tree_map(lambda p: p.astype(jnp.result_type(float)), params)

    kind = "attention" if attention else "no attention"
    return Problem(
        loss=loss,
        init=init,
        n_data=x.shape[0],
        name=f"sequence_classifier({kind}, {'tokens' if embed else 'vectors'}, width {width}, depth {depth})",
        dataset={"x": x, "y": y},
    )
