"""The pretraining step's matrix products, timed one by one in JAX and torch.

`python -m mixmim_jax.benchmark --kernels ...` runs it. Where the step
benchmark says how much slower or faster the whole JAX step is than
mmpretrain's, this says how much of either step the matrix products alone
take, so the rest (softmax, LayerNorm, GELU, copies, optimizer, allocation)
is known by subtraction:

* every linear layer of the model (blocks, patch merging, decoder embed and
  prediction) at the step's shapes: the forward product x @ W and the two of
  the backward pass, g @ W^T and x^T @ g;
* every attention's six batched products (q k^T and p v forward; p^T g, g v^T,
  ds k and ds^T q backward) and its softmax forward and backward.

Each is a separate jitted call (one torch call) on random float32 operands,
timed as the median of a few runs after a warm-up, torch with as many threads
as XLA's CPU client. Convolutions (the 4x4 patch embedding) are left out.
Each row includes one call's fixed cost per product (dispatch and waiting;
printed as the "per-call floor", a few microseconds here), which a compiled
step does not pay per product.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mixmim_jax.model.arch import ModelConfig


@dataclasses.dataclass(frozen=True)
class Linear:
  """`count` linear layers mapping (m, k) activations to (m, n)."""
  kind: ClassVar[str] = "linear"
  products: ClassVar[int] = 3      # forward, grad of the input, grad of the weight
  name: str
  m: int
  k: int
  n: int
  count: int

  @property
  def flops(self) -> int:          # one product, forward or either backward one
    return 2 * self.m * self.k * self.n


@dataclasses.dataclass(frozen=True)
class AttentionCore:
  """`count` attentions over `batch` (images x windows x heads) independent
  (tokens x tokens) problems of width head_dim."""
  kind: ClassVar[str] = "attention"
  products: ClassVar[int] = 6      # two forward, four backward
  name: str
  batch: int
  tokens: int
  head_dim: int
  count: int

  @property
  def flops(self) -> int:          # one of the six batched products
    return 2 * self.batch * self.tokens * self.tokens * self.head_dim


def linear_layers(cfg: ModelConfig, batch: int) -> list[Linear]:
  """The pretraining model's linear layers, as encoder.py and decoder.py apply them."""
  layers = []
  hidden = lambda c: int(c * cfg.mlp_ratio)  # noqa: E731
  for s, (res, c, depth) in enumerate(zip(cfg.stage_resolutions, cfg.stage_dims, cfg.depths)):
    m = batch * res * res
    layers += [Linear(f"stage {s} qkv", m, c, 3 * c, depth),
               Linear(f"stage {s} proj", m, c, c, depth),
               Linear(f"stage {s} fc1", m, c, hidden(c), depth),
               Linear(f"stage {s} fc2", m, hidden(c), c, depth)]
    if s < len(cfg.depths) - 1:                  # patch merging: 2x2 tokens -> one
      layers.append(Linear(f"stage {s} merge", m // 4, 4 * c, 2 * c, 1))
  tokens, d = cfg.num_mask_cells, cfg.decoder_dim
  m = 2 * batch * tokens                         # the two unmixing sequences per image
  layers += [Linear("decoder embed", batch * tokens, cfg.num_features, d, 1),
             Linear("decoder qkv", m, d, 3 * d, cfg.decoder_depth),
             Linear("decoder proj", m, d, d, cfg.decoder_depth),
             Linear("decoder fc1", m, d, hidden(d), cfg.decoder_depth),
             Linear("decoder fc2", m, hidden(d), d, cfg.decoder_depth),
             Linear("decoder pred", m, d, cfg.target_dim, 1)]
  return layers


def attention_cores(cfg: ModelConfig, batch: int) -> list[AttentionCore]:
  """Window attention per encoder stage, then the decoder's global attention."""
  cores = []
  for s, (res, window, c, heads, depth) in enumerate(zip(
      cfg.stage_resolutions, cfg.effective_windows, cfg.stage_dims, cfg.num_heads,
      cfg.depths)):
    windows = (res // window) ** 2
    cores.append(AttentionCore(f"stage {s}", batch * windows * heads, window * window,
                               c // heads, depth))
  cores.append(AttentionCore("decoder", 2 * batch * cfg.decoder_heads, cfg.num_mask_cells,
                             cfg.decoder_dim // cfg.decoder_heads, cfg.decoder_depth))
  return cores


def _median_time(fn: Callable[[], object], repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


class _Jax:
  """JAX's side: each product one jitted call; outputs are waited for."""
  name = "jax"

  def __init__(self, seed: int = 0):
    self.rng = np.random.default_rng(seed)

  def array(self, *shape):
    return jnp.asarray(self.rng.standard_normal(shape, dtype=np.float32))

  def timer(self, fn, *args, repeats):
    f = jax.jit(fn)
    return _median_time(lambda: jax.block_until_ready(f(*args)), repeats)

  def call_floor(self, repeats: int) -> float:
    return self.timer(lambda x: x + 1, self.array(1), repeats=repeats)

  def linear(self, layer: Linear, repeats: int) -> dict:
    x, w, g = (self.array(layer.m, layer.k), self.array(layer.k, layer.n),
               self.array(layer.m, layer.n))
    return dict(forward=self.timer(lambda x, w: x @ w, x, w, repeats=repeats),
                grad_input=self.timer(lambda g, w: g @ w.T, g, w, repeats=repeats),
                grad_weight=self.timer(lambda x, g: x.T @ g, x, g, repeats=repeats))

  def attention(self, core: AttentionCore, repeats: int) -> dict:
    b, n, d = core.batch, core.tokens, core.head_dim
    q, k = self.array(b, n, d), self.array(b, n, d)
    p, g = jax.nn.softmax(self.array(b, n, n)), self.array(b, n, n)
    t = lambda fn, *a: self.timer(fn, *a, repeats=repeats)  # noqa: E731
    return dict(
        # q k^T and g v^T; p v and ds k; p^T g and ds^T q: two calls of each per attention.
        qk=2 * t(lambda q, k: jnp.einsum("bqd,bkd->bqk", q, k), q, k),
        pv=2 * t(lambda p, v: jnp.einsum("bqk,bkd->bqd", p, v), p, k),
        ptg=2 * t(lambda p, g: jnp.einsum("bqk,bqd->bkd", p, g), p, q),
        softmax=t(lambda s: jax.nn.softmax(s, axis=-1), g),
        softmax_grad=t(lambda p, g: p * (g - jnp.sum(p * g, axis=-1, keepdims=True)), p, g))


class _Torch:
  """torch's side, the calls mmpretrain's layers make (mm, bmm, softmax)."""
  name = "torch"

  def __init__(self, threads: int, seed: int = 0):
    import torch  # pylint: disable=import-outside-toplevel
    self.torch = torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)

  def call_floor(self, repeats: int) -> float:
    x = self.torch.randn(1)
    return _median_time(lambda: x + 1, repeats)

  def linear(self, layer: Linear, repeats: int) -> dict:
    torch = self.torch
    x, w, g = (torch.randn(layer.m, layer.k), torch.randn(layer.k, layer.n),
               torch.randn(layer.m, layer.n))
    return dict(forward=_median_time(lambda: torch.mm(x, w), repeats),
                grad_input=_median_time(lambda: torch.mm(g, w.t()), repeats),
                grad_weight=_median_time(lambda: torch.mm(x.t(), g), repeats))

  def attention(self, core: AttentionCore, repeats: int) -> dict:
    torch = self.torch
    b, n, d = core.batch, core.tokens, core.head_dim
    q, k = torch.randn(b, n, d), torch.randn(b, n, d)
    p, g = torch.softmax(torch.randn(b, n, n), -1), torch.randn(b, n, n)
    t = lambda fn: _median_time(fn, repeats)  # noqa: E731
    return dict(
        qk=2 * t(lambda: torch.bmm(q, k.transpose(1, 2))),
        pv=2 * t(lambda: torch.bmm(p, k)),
        ptg=2 * t(lambda: torch.bmm(p.transpose(1, 2), q)),
        softmax=t(lambda: torch.softmax(g, -1)),
        softmax_grad=t(lambda: torch._softmax_backward_data(g, p, -1, torch.float32)))  # pylint: disable=protected-access


def benchmark_kernels(cfg: ModelConfig, batch: int, threads: int, reference: bool,
                      repeats: int = 5) -> dict:
  """Seconds per step of every linear layer and attention product (times its
  count in the model), in JAX and, with `reference`, in torch."""
  sides = [_Jax()] + ([_Torch(threads)] if reference else [])
  rows = []
  for item in linear_layers(cfg, batch) + attention_cores(cfg, batch):
    row = dict(kind=item.kind, **dataclasses.asdict(item),
               flops_per_step=item.products * item.flops * item.count)
    for side in sides:
      times = getattr(side, item.kind)(item, repeats)     # side.linear / side.attention
      row[side.name] = {k: v * item.count for k, v in times.items()}
    rows.append(row)
  totals = {}
  for kind in (Linear.kind, AttentionCore.kind):
    of_kind = [r for r in rows if r["kind"] == kind]
    totals[f"{kind}_flops"] = sum(r["flops_per_step"] for r in of_kind)
    for side in sides:
      totals[f"{side.name}_{kind}_s"] = sum(sum(r[side.name].values()) for r in of_kind)
  totals.update({f"{side.name}_call_floor_s": side.call_floor(max(repeats, 20))
                 for side in sides})
  return dict(kind="kernels", batch=batch, threads=threads, rows=rows, totals=totals)


def report_lines(r: dict) -> list[str]:
  sides = [s for s in ("jax", "torch") if s in r["rows"][0]]
  lines = [f"matrix products of one pretraining step (batch {r['batch']}, float32, "
           f"{r['threads']} threads), seconds per step summed over the model's layers:"]
  head = "  ".join(f"{s:>8s} ms {s:>6s} GF/s" for s in sides)
  lines.append(f"  {'layer':16s} {'shape':>22s} x{'n':<3s} {head}"
               + ("  jax/torch" if len(sides) == 2 else ""))
  for row in r["rows"]:
    shape = (f"{row['m']}x{row['k']}x{row['n']}" if row["kind"] == "linear"
             else f"{row['batch']}x{row['tokens']}x{row['head_dim']}")
    label = row["name"] + ("" if row["kind"] == "linear" else " attn")
    cells, secs = [], []
    for s in sides:
      t = sum(row[s].values())
      secs.append(t)
      # Softmax moves data, it does no products: FLOP/s count the products only.
      products = t - row[s].get("softmax", 0.0) - row[s].get("softmax_grad", 0.0)
      cells.append(f"{t * 1e3:11.1f} {row['flops_per_step'] / products / 1e9:11.1f}")
    ratio = f"  {secs[0] / secs[1]:9.2f}" if len(secs) == 2 else ""
    lines.append(f"  {label:16s} {shape:>22s} x{row['count']:<3d} " + "  ".join(cells) + ratio)
  tot = r["totals"]
  for kind in ("linear", "attention"):
    flops = tot[f"{kind}_flops"]
    lines.append(f"  all {kind} products ({flops / 1e9:.2f} GFLOP): " + ", ".join(
        f"{s} {tot[f'{s}_{kind}_s'] * 1e3:.0f} ms" for s in sides))
  lines.append("  per-call floor (a jitted x + 1 / torch x + 1 on one number): " + ", ".join(
      f"{s} {tot[f'{s}_call_floor_s'] * 1e6:.0f} us" for s in sides))
  return lines
