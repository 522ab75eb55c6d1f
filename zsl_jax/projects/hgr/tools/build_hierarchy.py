"""Builds the HGR-Net class hierarchy and class splits (21K-D, 21K-P, 2/3-hop).

  python -m zsl_jax.tools.build_hierarchy --source imagenet_xml --xml structure_released.xml \
      --testsets imagenet-testsets.json --winter21 winter_2021.txt --out work/hier
  python -m zsl_jax.tools.build_hierarchy --source wordnet --universe imagenet-xml-wnids.json \
      --testsets imagenet-testsets.json --winter21 winter_2021.txt --out work/hier

Writes OUT/hierarchy.json (class order, names, parents, ancestor paths; `Hierarchy.load`),
OUT/class_splits.json (WNID lists and counts), OUT/graph_edges.json (the graph before non-class
removal) and OUT/shared_names.json (class names used by several classes), and prints the counts.
`--tie_break networkx` gives a class with several shortest root paths the one the official code's
`networkx.shortest_path` picks (default `wnid`: the smallest WNID sequence); the count of classes
it affects is printed and kept in hierarchy.json's meta.
"""
import json
import logging
import pathlib
import sys

from zsl_jax import cli
from zsl_jax import paths
from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.hierarchy import graph as graph_lib
from zsl_jax.projects.hgr.hierarchy import splits as splits_lib
from zsl_jax.projects.hgr.hierarchy import tie_break as tie_break_lib
from zsl_jax.projects.hgr.hierarchy import wordnet

logger = logging.getLogger(__name__)


def build(source, testsets, winter21, *, xml=None, universe=None, p_list=None, names="wordnet", wordnet_path=None,
          tie_break="wnid"):
  """Returns (Hierarchy, class splits dict, full Graph) without writing anything.

  Args:
    source: 'imagenet_xml' (fall-2011 structure XML, as the reference) or 'wordnet'.
    testsets, winter21: paths of DGP's imagenet-testsets.json and the winter-2021 WNID list.
    xml: structure_released.xml (source imagenet_xml). universe: WNID list/JSON (source wordnet;
      default: every WNID of the testsets file).
    p_list: ImageNet-21K-P WNID list, 'timm' for the list inside the timm wheel, or None.
    names: 'wordnet' (the reference's rule) or 'xml' (first word of the XML `words`, no WordNet).
    tie_break: path of a class with several shortest root paths: 'wnid' (smallest WNID sequence) or
      'networkx' (the reference's `nx.shortest_path` on its `remove_irrelevant.py` edge order).
  """
  ts = splits_lib.read_testsets(testsets)
  w21 = splits_lib.read_wnid_list(winter21)
  wn = None
  if source == "imagenet_xml":
    if not xml:
      raise UserError("--source imagenet_xml needs --xml structure_released.xml (or use --source wordnet)")
    g = graph_lib.graph_from_imagenet_xml(xml)
  elif source == "wordnet":
    wn = wordnet.load_wordnet(wordnet_path)
    uni = splits_lib.read_wnid_list(universe) if universe else sorted({w for v in ts.values() for w in v})
    g = graph_lib.graph_from_wordnet(wn, uni)
    if g.missing:
      logger.warning("%d of %d universe WNIDs are not WordNet 3.0 nouns and are left out of the hierarchy, e.g. %s "
                     "(all listed in hierarchy.json meta.skipped_not_in_wordnet)", len(g.missing), len(set(uni)),
                     ", ".join(g.missing[:5]))
  else:
    raise UserError(f"unknown hierarchy source {source!r}; choose imagenet_xml or wordnet")
  if p_list == "timm":
    try:
      p_list = splits_lib.timm_21kp_list()
    except UserError as e:
      raise UserError(f"{e} (--p_list FILE), or pass --p_list none to skip the ImageNet-21K-P splits") from None
  p = splits_lib.read_wnid_list(p_list) if p_list else None
  cs = splits_lib.class_splits(g.nodes, ts, w21, p)
  if names == "xml":
    if not g.words:
      raise UserError("--names xml needs --source imagenet_xml; use --names wordnet")
    names_fn = lambda w: (g.words.get(w) or w).split(",")[0].strip()
  elif names == "wordnet":
    wn = wn or wordnet.load_wordnet(wordnet_path)
    names_fn = lambda w: wordnet.class_name(wn, w)
  else:
    raise UserError(f"unknown --names {names!r}; choose wordnet or xml")
  meta = {"source": source, "names": names, "inputs": {"testsets": str(testsets), "winter21": str(winter21),
                                                        "xml": str(xml) if xml else None,
                                                        "universe": str(universe) if universe else None,
                                                        "p_list": str(p_list) if p_list else None},
          "class_counts": splits_lib.split_counts(cs), "skipped_not_in_wordnet": g.missing}
  if names == "wordnet":  # The reference cuts at the first '.', e.g. st._augustine_grass.n.01 -> 'st'.
    meta["truncated_names"] = {w: wordnet.synset(wn, w).name() for w in cs["all"]
                               if wordnet.synset(wn, w).name().count(".") > 2}
  h = graph_lib.Hierarchy.from_graph(_class_graph(g, cs["all"], tie_break), names_fn, meta, tie_break)
  return h, cs, g


def _class_graph(g, classes, tie_break):
  """The class-only DAG; for `networkx` in the edge order the reference's non-class removal leaves."""
  if tie_break != "networkx":
    return g.restrict(classes)
  out = graph_lib.Graph(tie_break_lib.splice_restrict(g, classes))
  out.words, out.missing = g.words, g.missing
  return out


def write(out, h, cs, g):
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  h.save(out / "hierarchy.json")
  (out / "class_splits.json").write_text(json.dumps({"counts": splits_lib.split_counts(cs), **cs}))
  g.save_edges(out / "graph_edges.json")
  (out / "shared_names.json").write_text(json.dumps(h.shared_names(), indent=1))


def report(h, cs):
  lines = ["class splits: " + ", ".join(f"{k} {v:,}" for k, v in splits_lib.split_counts(cs).items())]
  st = h.stats()
  lines.append(f"hierarchy: {st['num_classes']:,} classes, depths 0..{st['max_depth']}, per depth "
               f"{st['nodes_per_depth']}, {st['multi_parent_nodes']} multi-parent, "
               f"{st['root_children']} under the root")
  shared = h.shared_names()
  lines.append(f"{len(shared)} class names are shared by several classes (identical prompts), e.g. "
               + "; ".join(f"{n!r}: {len(ws)}" for n, ws in list(shared.items())[:5]))
  tb = h.meta.get("tie_break_counts")
  if tb:
    lines.append(f"tie_break {h.meta['tie_break']}: {tb['classes_with_tied_paths']:,} classes have several shortest "
                 f"root paths; {tb['paths_differ_from_wnid_rule']:,} get a different path than the wnid rule's")
  cut = h.meta.get("truncated_names")
  if cut:
    lines.append(f"{len(cut)} names truncated at a '.' by the reference rule: "
                 + ", ".join(f"{w} {n}" for w, n in cut.items()))
  return "\n".join(lines)


def _run(args):
  paths.check_writable_dir(args.out, "--out")
  h, cs, g = build(args.source, args.testsets, args.winter21, xml=args.xml, universe=args.universe,
                   p_list=None if args.p_list == "none" else args.p_list, names=args.names,
                   wordnet_path=args.wordnet, tie_break=args.tie_break)
  write(args.out, h, cs, g)
  print(report(h, cs))
  print(f"wrote {args.out}/hierarchy.json, class_splits.json, graph_edges.json, shared_names.json")


def main(argv=None):
  ap = cli.ArgumentParser("build_hierarchy", description=__doc__)
  ap.add_argument("--source", choices=("imagenet_xml", "wordnet"), default="imagenet_xml",
                  help="hierarchy source: ImageNet's fall-2011 structure XML (reference) or WordNet 3.0 hypernyms")
  ap.add_argument("--xml", help="structure_released.xml (ImageNet fall 2011), for --source imagenet_xml")
  ap.add_argument("--universe", help="WNID list (text or JSON) the WordNet graph is restricted to, e.g. "
                  "imagenet-xml-wnids.json; default: every WNID in --testsets")
  ap.add_argument("--testsets", required=True, help="DGP/GCNZ imagenet-testsets.json (train/all/2-hops/3-hops lists)")
  ap.add_argument("--winter21", required=True, help="WNIDs of the ImageNet-21K winter-2021 release, one per line")
  ap.add_argument("--p_list", default="timm", help="ImageNet-21K-P winter-2021 WNID list; 'timm' = the list "
                  "shipped in the timm wheel; 'none' to skip the 21K-P splits")
  ap.add_argument("--names", choices=("wordnet", "xml"), default="wordnet",
                  help="class names: WordNet synset name (reference rule) or the XML 'words' attribute")
  ap.add_argument("--wordnet", help="WordNet 3.0 directory (default: $ZSL_JAX_WORDNET, nltk data, /usr/share/wordnet)")
  ap.add_argument("--tie_break", choices=tie_break_lib.RULES, default="wnid",
                  help="ancestor path of a class with several shortest root paths: smallest WNID sequence, or "
                  "the official code's networkx.shortest_path choice")
  ap.add_argument("--out", required=True, help="output directory for hierarchy.json and class_splits.json")
  cli.show_warnings()  # inputs left out are counted in warnings
  return cli.run_command("build_hierarchy", _run, ap.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
