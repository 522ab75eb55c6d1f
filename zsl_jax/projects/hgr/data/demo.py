"""A small ImageNet-21K-like folder with real WNIDs, built in seconds, for demos and tests.

Real ImageNet-21K cannot be downloaded here, yet the whole HGR-Net pipeline (hierarchy, splits,
class-pure loading, hierarchical metrics) should run end to end, and the demo should show what the
method is for: recognising classes it never saw from their names. The demo uses 39 real WordNet
3.0 classes from three subtrees (dog, bird, musical instrument), each with three mid-level
classes and three leaves: two ILSVRC-1K leaves (seen) and one ImageNet-21K-only leaf (unseen)
per mid-level class; the top and mid-level classes are unseen too, as in the real 21K-D split.

An image shows the visual factors of its class and its ancestors: a background colour for the
top-level subtree, a stripe orientation for the mid level, a shape for the leaf, plus noise. The
prompts name those factors ("orange", "orange vertical", "orange vertical triangle"; `prompt_name`)
instead of the WordNet names, which a text tower trained from scratch on 18 classes could never
relate to anything. Every word of an unseen class's name occurs in seen class names, but the
unseen leaf's (stripe, shape) pair occurs in no seen class: a model that learns word -> visual
factor on the seen classes recognises the unseen ones from their prompts alone (zero-shot).
The WNIDs, the tree and the XML keep the real WordNet names; `meta/class_names.json` maps each
WNID to both, and `prepare_demo(names="xml")` builds the hierarchy with the real names instead.

Layout written under `root` (the same layout real data uses; see `make_demo`):

  ilsvrc/train/<wnid>/<wnid>_<i>.JPEG          seen classes (ILSVRC-2012 train layout)
  ilsvrc/val/<wnid>/ILSVRC2012_val_<i>.JPEG    seen classes, val in class folders
  imagenet21k/<wnid>/<wnid>_<i>.JPEG           every class (winter-2021 layout)
  meta/imagenet-testsets.json                  DGP-format class lists (train, all, 2-hops, ...)
  meta/winter_2021.txt                         the WNIDs present in imagenet21k/
  meta/imagenet21k_p.txt                       a 21K-P-style subset (leaves and mid levels)
  meta/structure_released.xml                  ImageNet's XML format, incl. a fa11misc/food subtree
  meta/universe.json                           classes + their non-class WordNet ancestors
  meta/class_names.json                        {wnid: {"wordnet": real name, "prompt": factor words}}
"""
import functools
import json
import os
import pathlib
import time
import xml.etree.ElementTree as ET

import numpy as np

from zsl_jax.data import demo_cache
from zsl_jax.data import images
from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.hierarchy import graph as graph_lib
from zsl_jax.projects.hgr.tools import build_hierarchy
from zsl_jax.projects.hgr.tools import make_splits

# Bump when the demo (images, class lists, hierarchy or index) changes for the same arguments:
# builds are cached by it, so every run then builds the new demo instead of reusing the old one.
VERSION = 2  # 2: prompts name the visual factors (zero-shot signal); stripe orientation by mid level.
NAMES = ("factors", "xml")  # prepare_demo(names=...): the prompts' class names
_PREPARED = "prepared.json"  # The returned dict, its paths relative to the build folder.

# (wnid, reference class name, parent wnid or None for a top class, seen in ILSVRC-1K)
DEMO_TREE = (
    ("n02084071", "dog", None, False),
    ("n02103406", "working dog", "n02084071", False),
    ("n02109047", "great dane", "n02103406", True),
    ("n02108089", "boxer", "n02103406", True),
    ("n02109391", "hearing dog", "n02103406", False),
    ("n02087122", "hunting dog", "n02084071", False),
    ("n02087394", "rhodesian ridgeback", "n02087122", True),
    ("n02088094", "afghan hound", "n02087122", True),
    ("n02087314", "courser", "n02087122", False),
    ("n02085374", "toy dog", "n02084071", False),
    ("n02085936", "maltese dog", "n02085374", True),
    ("n02085620", "chihuahua", "n02085374", True),
    ("n02086346", "toy spaniel", "n02085374", False),
    ("n01503061", "bird", None, False),
    ("n01816887", "parrot", "n01503061", False),
    ("n01817953", "african grey", "n01816887", True),
    ("n01818515", "macaw", "n01816887", True),
    ("n01818832", "kea", "n01816887", False),
    ("n01825930", "coraciiform bird", "n01503061", False),
    ("n01828970", "bee eater", "n01825930", True),
    ("n01829413", "hornbill", "n01825930", True),
    ("n01830915", "motmot", "n01825930", False),
    ("n01789386", "gallinaceous bird", "n01503061", False),
    ("n01796340", "ptarmigan", "n01789386", True),
    ("n01798484", "prairie chicken", "n01789386", True),
    ("n01799302", "guan", "n01789386", False),
    ("n03800933", "musical instrument", None, False),
    ("n04338517", "stringed instrument", "n03800933", False),
    ("n02787622", "banjo", "n04338517", True),
    ("n04536866", "violin", "n04338517", True),
    ("n04224842", "sitar", "n04338517", False),
    ("n03915437", "percussion instrument", "n03800933", False),
    ("n03720891", "maraca", "n03915437", True),
    ("n03447721", "gong", "n03915437", True),
    ("n03157348", "cymbal", "n03915437", False),
    ("n04586932", "wind instrument", "n03800933", False),
    ("n03840681", "ocarina", "n04586932", True),
    ("n03372029", "flute", "n04586932", True),
    ("n03609397", "kazoo", "n04586932", False),
)
# Non-class WordNet ancestors in the XML (animal > canine > dog, animal > bird, device >
# instrument), so that building the hierarchy has to remove them. The WordNet universe holds
# canine and device but not animal: WordNet also files game birds under animal > game, which
# would pull the grouse leaves up to depth 0.
NON_CLASS = (("n00015388", "animal", None), ("n02083346", "canine", "n00015388"), ("n03183080", "device", None))
_NON_CLASS_PARENT = {"n02084071": "n02083346", "n01503061": "n00015388", "n03800933": "n03183080"}
FOOD = ("n00021265", "food, nutrient")
# The visual factors and the words that name them (index = position in the tree; see `_pattern`).
COLOURS = (("orange", (200, 110, 50)), ("blue", (50, 150, 220)), ("purple", (160, 60, 170)))  # top level
STRIPES = (("vertical", 0.0), ("horizontal", 0.5), ("diagonal", 0.25))  # mid level: wave direction / pi
SHAPES = ("circle", "square", "triangle")  # leaf level


def design():
  """The generator's constants that decide its output (part of the demo cache key)."""
  return {"tree": DEMO_TREE, "colours": COLOURS, "stripes": STRIPES, "shapes": SHAPES}


def demo_classes():
  """{wnid: (name, parent, seen, level, (top, mid, leaf) positions)} in DEMO_TREE order."""
  out = {}
  for wnid, name, parent, seen in DEMO_TREE:
    if parent is None:
      p = (sum(1 for v in out.values() if v[3] == 0), None, None)
      level = 0
    else:
      pp = out[parent][4]
      siblings = sum(1 for v in out.values() if v[1] == parent)
      level = out[parent][3] + 1
      p = (pp[0], siblings, None) if level == 1 else (pp[0], pp[1], siblings)
    out[wnid] = (name, parent, seen, level, p)
  return out


def shape_of(position):
  """Leaf shape index: within a mid-level class the unseen leaf (third) gets the shape that the
  seen leaves of the other mid-level classes show, so its (stripe, shape) pair is new but each part is known."""
  _, mid, leaf = position
  return (leaf + mid) % len(SHAPES)


def prompt_name(position):
  """The class name the prompts use: the words of the class's factors, ancestors first."""
  top, mid, leaf = position
  words = [COLOURS[top][0]]
  if mid is not None:
    words.append(STRIPES[mid][0])
  if leaf is not None:
    words.append(SHAPES[shape_of(position)])
  return " ".join(words)


def _pattern(rng, size, position):
  """[size, size, 3] uint8 image: colour(top) + stripes(mid) + shape(leaf) + noise."""
  top, mid, leaf = position
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  colour = np.asarray(COLOURS[top][1], np.float32)
  img = np.broadcast_to(colour * rng.uniform(0.85, 1.15), (size, size, 3)).copy()
  if mid is not None:
    theta = np.pi * STRIPES[mid][1] + rng.normal(0, 0.05)
    period = size / rng.uniform(3.5, 5.5)
    phase = rng.uniform(0, 2 * np.pi)
    img += 45 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)[..., None]
  if leaf is not None:
    shape = shape_of(position)
    r = size * rng.uniform(0.22, 0.3)
    cy, cx = rng.uniform(r, size - r, 2)
    if shape == 0:
      inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif shape == 1:
      inside = (np.abs(yy - cy) <= r * 0.8) & (np.abs(xx - cx) <= r * 0.8)
    else:
      inside = (yy - cy + r >= 0) & (yy - cy <= r) & (np.abs(xx - cx) <= (yy - cy + r) / 2)
    img[inside] = 255 - img[inside] * 0.6
  img += rng.normal(0, 12, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def _write_xml(path, classes):
  root = ET.Element("ImageNetStructure")
  ET.SubElement(root, "releaseData").text = "fall2011"
  fall11 = ET.SubElement(root, "synset", wnid="fall11", words="ImageNet 2011 Fall Release", gloss="")
  els = {}
  for wnid, name, parent in NON_CLASS:
    els[wnid] = ET.SubElement(els[parent] if parent else fall11, "synset", wnid=wnid, words=name, gloss="")
  for wnid, (name, parent, _, _, _) in classes.items():
    host = els[parent] if parent else els[_NON_CLASS_PARENT[wnid]]
    els[wnid] = ET.SubElement(host, "synset", wnid=wnid, words=name, gloss="")
  misc = ET.SubElement(fall11, "synset", wnid="fa11misc", words="Misc", gloss="")
  ET.SubElement(misc, "synset", wnid="n09287968", words="geological formation", gloss="")
  ET.SubElement(misc, "synset", wnid=FOOD[0], words=FOOD[1], gloss="")
  ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def make_demo(root, *, image_size=64, train_per_class=24, val_per_class=6, images_per_class=16, seed=0):
  """Writes the demo folder (layout in the module docstring) and returns its paths.

  Returns:
    dict with keys root, ilsvrc_train, ilsvrc_val, imagenet21k, testsets, winter21, p_list, xml,
    universe, class_names (paths as strings) and seen/unseen (WNID lists).
  """
  t0 = time.time()
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  classes = demo_classes()
  seen = [w for w, v in classes.items() if v[2]]
  unseen = [w for w, v in classes.items() if not v[2]]
  paths = {"root": root, "ilsvrc_train": root / "ilsvrc" / "train", "ilsvrc_val": root / "ilsvrc" / "val",
           "imagenet21k": root / "imagenet21k", "testsets": root / "meta" / "imagenet-testsets.json",
           "winter21": root / "meta" / "winter_2021.txt", "p_list": root / "meta" / "imagenet21k_p.txt",
           "xml": root / "meta" / "structure_released.xml", "universe": root / "meta" / "universe.json",
           "class_names": root / "meta" / "class_names.json"}
  for p in ("ilsvrc_train", "ilsvrc_val", "imagenet21k"):
    paths[p].mkdir(parents=True, exist_ok=True)
  (root / "meta").mkdir(parents=True, exist_ok=True)

  def write(folder, wnid, names):
    (folder / wnid).mkdir(exist_ok=True)
    for n in names:
      (folder / wnid / n).write_bytes(images.encode_jpeg(_pattern(rng, image_size, classes[wnid][4]), quality=85))

  val_id = 0
  for w in seen:
    write(paths["ilsvrc_train"], w, [f"{w}_{i}.JPEG" for i in range(train_per_class)])
    write(paths["ilsvrc_val"], w, [f"ILSVRC2012_val_{val_id + i:08d}.JPEG" for i in range(val_per_class)])
    val_id += val_per_class
  for w in classes:
    write(paths["imagenet21k"], w, [f"{w}_{i}.JPEG" for i in range(images_per_class)])

  leaves_unseen = [w for w in unseen if classes[w][3] == 2]
  mids = [w for w in classes if classes[w][3] == 1]
  testsets = {"train": seen, "all": unseen, "2-hops": leaves_unseen, "3-hops": leaves_unseen + mids,
              "3-hops-pure": mids, "rest": unseen}
  paths["testsets"].write_text(json.dumps(testsets, indent=1))
  paths["winter21"].write_text("\n".join(classes) + "\n")
  paths["p_list"].write_text("\n".join(w for w in classes if classes[w][3] > 0) + "\n")
  _write_xml(paths["xml"], classes)
  universe = list(classes) + [w for w, _, p in NON_CLASS if p or w != "n00015388"]
  paths["universe"].write_text(json.dumps(sorted(universe)))
  names = {w: {"wordnet": v[0], "prompt": prompt_name(v[4])} for w, v in classes.items()}
  paths["class_names"].write_text(json.dumps(names, indent=1))
  out = {k: str(v) for k, v in paths.items()}
  out.update(seen=seen, unseen=unseen, seconds=round(time.time() - t0, 2))
  return out


def prepare_demo(root, *, seed=0, source="imagenet_xml", names="factors", **kwargs):
  """make_demo + build_hierarchy + make_splits, built once into a keyed folder under `root`.

  `names`: "factors" names every class by its visual factors (`prompt_name`, the zero-shot demo);
  "xml" keeps the real WordNet names of the XML. The folder's name carries a hash of the arguments
  (make_demo's defaults included), of the generator's constants (`design`) and of VERSION, so a
  changed generator builds anew; concurrent callers end with one complete copy (see
  `zsl_jax.data.demo_cache`). `**kwargs` go to `make_demo`.

  Returns:
    the `make_demo` dict for the build folder plus 'hierarchy_dir' (hierarchy.json,
    class_splits.json) and 'index' (image index directory).
  """
  if names not in NAMES:
    raise UserError(f"demo class names {names!r} are not one of: {', '.join(NAMES)}")
  params = {**demo_cache.arguments(make_demo, seed=seed, **kwargs), "source": source, "names": names,
            "design": design()}
  build = functools.partial(_build, seed=seed, source=source, names=names, **kwargs)
  built = demo_cache.build_once(root, "imagenet21k", params, build, version=VERSION)
  info = json.loads((built / _PREPARED).read_text())
  relative = info.pop("relative")
  return {**info, **{k: str(built / rel) for k, rel in relative.items()}}


def _hierarchy(paths, source, names):
  """build_hierarchy on the demo's files; with names="factors" the prompts name the visual factors."""
  h, cs, g = build_hierarchy.build(source, paths["testsets"], paths["winter21"], xml=paths["xml"],
                                   universe=paths["universe"], p_list=paths["p_list"],
                                   names="xml" if source == "imagenet_xml" else "wordnet")
  if names == "factors":
    prompt = {w: v["prompt"] for w, v in json.loads(pathlib.Path(paths["class_names"]).read_text()).items()}
    meta = {**h.meta, "names": "demo factors (zsl_jax.projects.hgr.data.demo.prompt_name)"}
    h = graph_lib.Hierarchy(h.wnids, [prompt[w] for w in h.wnids], h.parents, h.ancestor_path, meta,
                            h.root_children)
  return h, cs, g


def _build(work, final, *, seed, source, names, **kwargs):
  """Writes the whole demo into `work`; the index names its image folders under `final`."""
  paths = make_demo(work, seed=seed, **kwargs)
  h, cs, g = _hierarchy(paths, source, names)
  hdir, index = work / "hierarchy", work / "index"
  build_hierarchy.write(hdir, h, cs, g)
  roots = {k: paths[k] for k in ("ilsvrc_train", "ilsvrc_val", "imagenet21k")}
  make_splits.make(hdir, roots, index, seed=seed, workers=8, overwrite=True)
  meta = json.loads((index / "meta.json").read_text())  # Image roots as they will be after the rename.
  meta["roots"] = {k: str(pathlib.Path(final).resolve() / os.path.relpath(v, work)) for k, v in roots.items()}
  (index / "meta.json").write_text(json.dumps(meta, indent=1))
  paths.update(hierarchy_dir=str(hdir), index=str(index))
  relative = {k: os.path.relpath(v, work) for k, v in paths.items() if isinstance(v, str)}
  info = {k: v for k, v in paths.items() if k not in relative}
  (work / _PREPARED).write_text(json.dumps({**info, "relative": relative}, indent=1))
