"""Prompts packed end to end into fixed-length rows, encoded in chunks divided over the devices.

Why packing: an HGR-Net step encodes about 1,500 unique prompts of 8-19 tokens ("a photo of a {}."
over WordNet, 9.4 on average). One prompt per row pads every row to the step's longest prompt (24
tokens in most steps), 2.6 tokens encoded per useful one. Rows of `row_tokens` tokens holding
several prompts each, with attention kept inside each prompt and positions restarting at each
start-of-text token (`segments_and_positions`), give every prompt the feature `CLIP.encode_text`
gives it alone, with a few padding tokens at the end of each row.

Why chunks: the rows of a step come as a static number of chunks (`Layout`). A step fills the first
ones and `chunk_loop` runs over those only, so every step has one shape (one compilation) whatever
its prompt count, the padding encoded is at most the last chunk's free rows, and memory holds one
chunk's activations at a time. Each chunk's rows are divided over the mesh's batch axes
(`shard_map`): every device encodes its share, then the features are all-gathered for the loss.
"""
import dataclasses
import logging

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from zsl_jax import sharding
from zsl_jax.text import tokenizer

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static shape of one step's packed prompts: `chunks` x `chunk_rows` rows of `row_tokens` tokens.

  Each row has `row_slots` prompt slots (row_tokens // the shortest prompt); `chunk_rows` is a
  multiple of the devices the rows are divided over.
  """
  row_tokens: int
  row_slots: int
  chunk_rows: int
  chunks: int

  @property
  def rows(self):
    return self.chunks * self.chunk_rows

  @property
  def slots(self):
    return self.rows * self.row_slots


def rows_bound(tokens, row_tokens, longest):
  """Rows `pack` needs at most for prompts of `tokens` tokens in all, none longer than `longest`.

  `pack` closes a row only when no remaining prompt fits in it, so every row but the last holds
  more than row_tokens - longest tokens.
  """
  return int(tokens) // (row_tokens - longest + 1) + 1


def assign_rows(lengths, row_tokens):
  """(row, start) of every prompt: longest first, each row filled with the longest prompts that fit.

  Deterministic; lengths int [U] (each <= row_tokens). The loop runs in plain Python integers over
  distinct row fillings: a filling that took as many prompts of each length as fitted repeats
  while those lengths last, so it is placed for all its repeats at once. Placement is vectorised.
  """
  lengths = np.asarray(lengths, np.int64)
  order = np.argsort(-lengths, kind="stable")                # longest first
  values, counts = np.unique(lengths, return_counts=True)
  values, left = values[::-1].tolist(), counts[::-1].tolist()  # classes in `order`'s order
  blocks = []                                                # (class, first row, offset, per row, rows)
  active, row = list(range(len(values))), 0
  while active:
    space, filling, repeats = row_tokens, [], True
    for i in active:
      n = min(left[i], space // values[i])
      if n:
        repeats = repeats and n == space // values[i]        # limited by space, not by what is left
        filling.append((i, row_tokens - space, n))
        left[i] -= n
        space -= n * values[i]
    rows = 1 + (min(left[i] // n for i, _, n in filling) if repeats else 0)
    for i, offset, n in filling:
      left[i] -= n * (rows - 1)
      blocks.append((i, row, offset, n, rows))
    active = [i for i in active if left[i]]
    row += rows
  blocks = np.asarray(blocks, np.int64).reshape(-1, 5)
  reps = blocks[:, 4]
  blocks = np.repeat(blocks[:, :4], reps, axis=0)            # one block per (class, row)
  blocks[:, 1] += np.arange(len(blocks)) - np.repeat(np.cumsum(reps) - reps, reps)
  blocks = blocks[np.argsort(blocks[:, 0], kind="stable")]   # class by class, rows in order
  # Concatenated class by class, the blocks' prompts are exactly `order`.
  n = blocks[:, 3]
  within = np.arange(len(lengths)) - np.repeat(np.cumsum(n) - n, n)
  row_of, start_of = np.empty(len(lengths), np.int64), np.empty(len(lengths), np.int64)
  row_of[order] = np.repeat(blocks[:, 1], n)
  start_of[order] = np.repeat(blocks[:, 2], n) + np.repeat(np.asarray(values, np.int64)[blocks[:, 0]], n) * within
  return row_of, start_of


def pack(tokens, lengths, layout):
  """Packs a step's prompts into `layout`.

  Args:
    tokens: int [U, >= longest] each prompt's tokens (SOT ... EOT, then zeros).
    lengths: int [U] tokens up to and including EOT.
  Returns:
    (tokens int32 [rows, row_tokens], pool int32 [rows, row_slots] EOT position of each slot in its
    row (-1: empty), slot int32 [U] each prompt's slot (row * row_slots + k), chunks in use).
  """
  lengths = np.asarray(lengths, np.int64)
  t, p = layout.row_tokens, layout.row_slots
  row_of, start_of = assign_rows(lengths, t)
  used_rows = int(row_of.max()) + 1 if len(lengths) else 0
  if used_rows > layout.rows:
    raise RuntimeError(f"{len(lengths)} prompts need {used_rows} packed rows but the layout holds {layout.rows}; "
                       f"the sampler's step bound is wrong")
  # k-th prompt of its row, in order of start.
  by_place = np.lexsort((start_of, row_of))
  rank = np.empty_like(by_place)
  rank[by_place] = np.arange(len(by_place))
  row_first = np.searchsorted(row_of[by_place], np.arange(used_rows))
  k = rank - row_first[row_of]
  if len(k) and k.max() >= p:
    raise RuntimeError(f"a packed row holds {k.max() + 1} prompts but the layout has {p} slots per row")
  out = np.zeros((layout.rows, t), np.int32)
  prompt = np.repeat(np.arange(len(lengths)), lengths)
  offset = np.arange(len(prompt)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  out[row_of[prompt], start_of[prompt] + offset] = np.asarray(tokens)[prompt, offset]
  pool = np.full((layout.rows, p), -1, np.int32)
  pool[row_of, k] = start_of + lengths - 1
  chunks = -(-used_rows // layout.chunk_rows)
  return out, pool, (row_of * p + k).astype(np.int32), chunks


def segments_and_positions(tokens):
  """(segment id, position in its prompt), both int32 [R, T], of packed rows: a prompt starts at SOT.

  Padding after a row's last prompt continues that prompt's segment; causal attention keeps it
  out of every real token's feature.
  """
  is_start = tokens == tokenizer.SOT                                    # [R, T]
  segment = jnp.cumsum(is_start, axis=1, dtype=jnp.int32)
  index = jnp.arange(tokens.shape[1], dtype=jnp.int32)
  start = jax.lax.cummax(jnp.where(is_start, index, 0), axis=1)
  return segment, index - start


def chunk_loop(encode_chunk, axes=()):
  """(variables, x [n, r, ...], aux [n, r, ...], chunks) -> [n, r, S, E]: `encode_chunk(variables, x[i], *aux[i])`
  for the first `chunks` chunks only, zeros for the rest, differentiable in `variables` and `x`.
  Under `shard_map` over `axes`, `variables` and `x` vary per device.

  A `lax.fori_loop` with a traced trip count: chunks out of use cost nothing, forward or backward
  (a `lax.scan` skipping them with `lax.cond` still runs both passes over every chunk: on XLA's CPU
  a skipped chunk of CLIP's text tower cost 0.75 s). The backward pass runs each chunk's forward
  again (`jax.vjp` per chunk), so only one chunk's activations are ever alive: memory does not
  grow with the step's prompts, for one more forward pass of the text tower.
  """
  zeros = lambda shape, dtype: jax.lax.pcast(jnp.zeros(shape, dtype), axes, to="varying") if axes else \
      jnp.zeros(shape, dtype)

  def forward(variables, x, aux, chunks):
    shape = jax.eval_shape(encode_chunk, variables, x[0], *(a[0] for a in aux))
    body = lambda i, out: out.at[i].set(encode_chunk(variables, x[i], *(a[i] for a in aux)))
    return jax.lax.fori_loop(0, chunks, body, zeros((x.shape[0], *shape.shape), shape.dtype))

  def backward(saved, ct):
    variables, x, aux, chunks = saved

    def body(i, grads):
      g_vars, g_x = grads
      _, vjp = jax.vjp(lambda v, xi: encode_chunk(v, xi, *(a[i] for a in aux)), variables, x[i])
      dv, dx = vjp(ct[i])
      return jax.tree.map(jnp.add, g_vars, dv), g_x.at[i].set(dx)

    like = lambda a: zeros(a.shape, a.dtype)
    g_vars, g_x = jax.lax.fori_loop(0, chunks, body, (jax.tree.map(like, variables), like(x)))
    no_grad = lambda a: np.zeros(np.shape(a), jax.dtypes.float0)
    return g_vars, g_x, jax.tree.map(no_grad, aux), no_grad(chunks)

  loop = jax.custom_vjp(forward)
  loop.defvjp(lambda *args: (forward(*args), args), backward)
  return loop


def encode_chunks(encode_chunk, variables, x, aux, chunks, layout, mesh):
  """Features [slots, E] of packed prompts, each device encoding its share of every chunk in use.

  Args:
    encode_chunk: (variables, x [r, ...], *aux [r, ...]) -> features [r, S, E]; r = rows per device.
    variables: replicated model variables (only those `encode_chunk` uses: their gradient is summed
      chunk by chunk).
    x: float [layout.rows, ...] rows differentiated through (the embedded prompts).
    aux: tuple of int [layout.rows, ...] rows (tokens, pools).
    chunks: int32 scalar, chunks in use.
  """
  axes = sharding.batch_axes(mesh)
  n, r = layout.chunks, layout.chunk_rows
  x = x.reshape(n, r, *x.shape[1:])                                      # [n, r, ...]
  aux = tuple(a.reshape(n, r, *a.shape[1:]) for a in aux)
  loop = chunk_loop(encode_chunk, axes)

  def per_device(variables, x, aux, chunks):                             # [n, r / devices, ...]
    # Varying per device: the transpose of this cast sums the devices' parameter gradients.
    return loop(jax.lax.pcast(variables, axes, to="varying"), x, aux, chunks)

  split = P(None, axes)
  out = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), split, split, P()), out_specs=split)(
      variables, x, aux, chunks)
  out = jax.lax.with_sharding_constraint(out, NamedSharding(mesh, P()))  # all-gather [n, r, S, E]
  return out.reshape(layout.slots, out.shape[-1])
