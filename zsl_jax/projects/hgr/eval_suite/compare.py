"""`python -m zsl_jax.tools.compare_zero_shot`: every inference variant of one CLIP (and optionally a fine-tuned
HGR-Net run) on one test protocol, as one table.

  python -m zsl_jax.tools.compare_zero_shot --clip weights/RN50 --split in21k_d \\
      --hierarchy data/hierarchy/hierarchy.json --index data/index --out results/rn50_in21k_d \\
      [--hgr_run runs/hgr_rn50]

  python -m zsl_jax.tools.compare_zero_shot --demo --clip /tmp/zsl_demo --out /tmp/compare_demo

Each set of weights is restored once and scored by one hierarchical evaluator that encodes every test
image once and scores it under every variant (`eval_suite.variants`), so the rows share the images,
the hierarchy, the counts and the metric code of `python -m zsl_jax.main --config.mode=eval`. Writes
`<out>/compare_<protocol>.md` (the table), `.json` (every metric of every row) and `_per_depth.png`
(per-depth accuracy, one line per row), so the four protocols can share one folder; the prompt-ensemble
vectors are cached under `--cache_dir`, keyed by a fingerprint of the weights.
"""
import json
import math
import pathlib
import time

import jax

from zsl_jax import checkpoint as ckpt_lib
from zsl_jax import cli
from zsl_jax import contracts
from zsl_jax import engine as engine_lib
from zsl_jax import paths
from zsl_jax.errors import UserError
from zsl_jax.evaluators import base
from zsl_jax.models import clip as clip_lib
from zsl_jax.projects.hgr import config as hgr_config
from zsl_jax.projects.hgr import evaluator as hgr_evaluator
from zsl_jax.projects.hgr.eval_suite import plots
from zsl_jax.projects.hgr.eval_suite import variants as variants_lib

COMMAND = "compare_zero_shot"
# (column, metric, digits): the table's columns; the JSON keeps every metric.
COLUMNS = (("Hit@1", "hit@1", 3), ("Hit@5", "hit@5", 3), ("TOR", "tor", 3), ("POR", "por", 3), ("HCA", "hca", 3),
           ("MTA", "mta", 3), ("mistake LCA depth", "mistake_depth", 2))
_CUSTOM_FIELDS = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "transformer_width",
                  "transformer_heads", "transformer_layers")


def parse_args(argv):
  p = cli.ArgumentParser(COMMAND, description=__doc__)
  p.add_argument("--clip", required=True, help="converted CLIP folder (zsl_jax.tools.convert_clip) or a zsl_jax "
                 "workdir / checkpoint folder whose weights act as the CLIP (e.g. the HGR demo's)")
  p.add_argument("--hgr_run", default="", help="optional zsl_jax workdir of a fine-tuned HGR-Net run (same CLIP "
                 "architecture), scored with --hgr_variants")
  p.add_argument("--split", default=next(iter(hgr_config.EVAL_SETS)),
                 help=f"test protocol: {', '.join(hgr_config.EVAL_SETS)}")
  p.add_argument("--out", required=True, help="output folder: compare_<protocol>.md, .json, _per_depth.png")
  p.add_argument("--variants", default=",".join(variants_lib.VARIANTS), help="variants scored for --clip")
  p.add_argument("--hgr_variants", default="plain", help="variants scored for --hgr_run")
  p.add_argument("--demo", action="store_true", help="the embedded HGR demo data instead of --hierarchy/--index")
  p.add_argument("--demo_root", default="", help="where the demo data is built (default: the config's)")
  p.add_argument("--hierarchy", default="", help="hierarchy.json from zsl_jax.tools.build_hierarchy")
  p.add_argument("--index", default="", help="image index folder from zsl_jax.tools.make_splits")
  p.add_argument("--array_record", default="", help="read the images from these ArrayRecord packs")
  p.add_argument("--batch_size", type=int, default=0, help="global test images per batch (default: the config's)")
  p.add_argument("--prompt_batch", type=int, default=0, help="prompts per text-tower call (default: the config's)")
  p.add_argument("--cache_dir", default="", help=f"prompt-ensemble cache (default {variants_lib.DEFAULT_CACHE})")
  p.add_argument("--hclip_threshold", type=float, default=0.5, help="Hierarchy-CLIP's confidence threshold")
  p.add_argument("--mta_cuts", type=int, default=25, help="tree cuts MTA averages over")
  p.add_argument("--mta_seed", type=int, default=0, help="seed of the tree cuts")
  return p.parse_args(argv)


def model_fields(source):
  """config.model fields of the CLIP architecture in `source` (converted folder or zsl_jax workdir)."""
  path = pathlib.Path(source).expanduser()
  if (path / clip_lib.CONFIG_FILE).is_file():
    config = clip_lib.CLIPConfig.from_json((path / clip_lib.CONFIG_FILE).read_text())
    preset = clip_lib.preset_name(config)
    if preset:
      return {"name": preset}
    if config.is_vit:
      raise UserError(f"{source} holds a ViT CLIP of no preset size; the HGR trainer builds custom sizes for "
                      f"ResNet CLIPs only")
    return {"name": "custom", "custom": {k: getattr(config, k) for k in _CUSTOM_FIELDS}}
  if ckpt_lib.is_zsl_checkpoint(path):
    workdir = ckpt_lib.resolve(path)[0].parents[2]
    try:
      model = json.loads((workdir / "config.json").read_text())["model"]
    except (OSError, ValueError, KeyError) as e:
      raise UserError(f"cannot read the model of {workdir}/config.json ({e}); pass the run's workdir") from e
    return {"name": model["name"], "custom": model.get("custom", {})}
  raise UserError(f"--clip {source} is neither a converted CLIP folder nor a zsl_jax run; convert a checkpoint "
                  f"first: python -m zsl_jax.tools.convert_clip IN OUT")


def build_config(args):
  """The HGR config of the protocol (`hgr_config`) with the CLIP's architecture and the data paths."""
  config = hgr_config.hgr_config(f"eval={args.split}" + (",demo" if args.demo else ""))
  config.mode = "eval"
  fields = model_fields(args.clip)
  config.model.name = fields["name"]
  for key, value in fields.get("custom", {}).items():
    config.model.custom[key] = tuple(value) if isinstance(value, list) else value
  if args.demo_root:
    config.data.demo_root = args.demo_root
  if not args.demo:
    config.data.hierarchy, config.data.index = args.hierarchy, args.index
  if args.array_record:
    config.data.images, config.data.array_record = "array_record", args.array_record
  engine_lib.trainer_class(config).check_config(config)
  return config


def _evaluator(engine, config, args, tag, variant):
  name, entry = next(iter(config.evals.items()))
  fields = {k: v for k, v in entry.items() if k not in ("type", "every_steps", "at_start")}
  fields.update(tag=tag, variant=variant, cache_dir=args.cache_dir, hclip_threshold=args.hclip_threshold,
                mta_cuts=args.mta_cuts, mta_seed=args.mta_seed,
                batch_size=base.round_batch_size(args.batch_size or entry.batch_size, engine.mesh),
                prompt_batch=args.prompt_batch or entry.prompt_batch)
  context = contracts.EvalContext(name=name, mesh=engine.mesh, workdir=pathlib.Path(args.out),
                                  offer=engine.trainer.eval_offer())
  return hgr_evaluator.Evaluator(context, **fields)


def compare(args):
  """[row]: one per (weights, variant), each {"weights", "variant", "source", **metrics}."""
  config = build_config(args)
  engine = engine_lib.Engine(config, args.out)
  runs = [("CLIP", args.clip, args.variants)] + ([("HGR-Net", args.hgr_run, args.hgr_variants)] if args.hgr_run else [])
  protocol = next(iter(config.evals))
  rows = []
  for weights, source, variant in runs:
    start = time.time()
    state, step = engine.restore_for_eval(source=source)
    evaluator = _evaluator(engine, config, args, f"{protocol}_{weights.lower().replace('-', '')}", variant)
    for name, metrics in evaluator.evaluate(state).items():
      rows.append({"weights": weights, "variant": name, "source": str(source), "step": step, **metrics})
    print(f"{weights} ({source}): {', '.join(evaluator.variants)} in {time.time() - start:.0f} s", flush=True)
  return config, rows


def _cell(value, digits):
  return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(rows, title):
  """The comparison table (fractions in [0, 1]; mistake depth counted from the root, higher is milder)."""
  head = ["weights", "variant"] + [c for c, _, _ in COLUMNS] + ["images"]
  lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["weights"], r["variant"]] + [_cell(r[m], d) for _, m, d in COLUMNS] + [str(r["count"])]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _json_safe(value):
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, list):
    return [_json_safe(v) for v in value]
  return value


def outputs(out, protocol):
  """(table, JSON, plot) paths of one protocol's comparison under `out`."""
  stem = pathlib.Path(out) / f"compare_{protocol}"
  return stem.with_suffix(".md"), stem.with_suffix(".json"), stem.with_name(f"{stem.name}_per_depth.png")


def write(out, rows, config, args):
  """The table, the JSON and the plot (`outputs`) under `out`."""
  pathlib.Path(out).mkdir(parents=True, exist_ok=True)
  name, entry = next(iter(config.evals.items()))
  md, js, png = outputs(out, name)
  title = f"{name} ({entry.classes}, split {entry.split}): {rows[0]['count']} images, {rows[0]['num_classes']} classes"
  table = markdown(rows, title)
  md.write_text(table)
  record = {"protocol": name, "classes": entry.classes, "clip": str(args.clip), "hgr_run": args.hgr_run or None,
            "mta_cuts": args.mta_cuts, "mta_seed": args.mta_seed, "hclip_threshold": args.hclip_threshold,
            "rows": [{k: _json_safe(v) for k, v in r.items()} for r in rows]}
  js.write_text(json.dumps(record, indent=1))
  plots.per_depth(png, {f"{r['weights']} {r['variant']}": r["depth_acc"] for r in rows},
                  rows[0]["depth_images"],
                  f"Per-depth accuracy, {name} ({rows[0]['count']} images)")
  return table


def _run(args):
  paths.check_writable_dir(args.out, "--out")  # before minutes of encoding, not after
  config, rows = compare(args)
  if jax.process_index() == 0:
    print(write(args.out, rows, config, args), end="")
    print(f"wrote {', '.join(str(p) for p in outputs(args.out, next(iter(config.evals))))}")


def main(argv=None):
  return cli.run_command(COMMAND, _run, parse_args(argv))
