"""A synthetic four-task benchmark (VQAv2 / GQA / NLVR² / COCO captions) in VL-Adapter's exact on-disk formats.

It is the framework's embedded default and the test suite's data: small rendered scenes (1–3 shapes — circle,
square, triangle — in six colours, two sizes, on a 3×3 layout with distinct columns; one shape per NLVR² image,
whose statements are read off the colours, see ``NLVR_KINDS``) written as 224×224 JPEGs,
and annotations in the files and fields VL-Adapter's loaders read (reference/vladapter_spec.md §1.1–§1.3, §1.7):

```
<root>/
  benchmark_card.json                       counts, sizes, seed, majority / question-type-prior baselines
  COCO/images/train2014/COCO_train2014_%012d.jpg     Karpathy split "train"
  COCO/images/val2014/COCO_val2014_%012d.jpg         Karpathy splits "restval", "val", "test"
  COCO/dataset_coco.json                    Karpathy-style captions, 5 per image
  vqa/karpathy_{train,val,test}.json        train = Karpathy train + restval images
  vqa/v2_mscoco_{train,val}2014_annotations.json     official-style annotations (10 answers per question)
  vqa/trainval_ans2label.json  vqa/trainval_label2ans.json
  VG/images/<numeric id>.jpg                GQA train + valid images
  GQA/images/n<digits>.jpg                  GQA testdev images
  GQA/{train,valid,testdev}.json  GQA/trainval_ans2label.json  GQA/trainval_label2ans.json
  nlvr/images/{train,dev,test}/<split>-<set>-<pair>-img{0,1}.jpg
  nlvr/{train,valid,test}.json              (valid.json uses the dev images, as in NLVR²)
```

Every question needs the image: colours, shapes, counts and positions are drawn independently and uniformly
(except that the two images of an NLVR² pair share a colour half the time), so a model that ignores vision stays at
the answer prior. Yes/no answers (VQA, GQA) and true/false labels (NLVR²,
also per statement template) are balanced by construction. VQA records carry 10 human-style answers with
occasional noise (synonyms such as "two"/"violet", confusions, yes↔no flips), so the soft ``label`` scores use the
LXMERT/VL-Adapter scale 1 → 0.3, 2 → 0.6, 3 → 0.9, ≥4 → 1.0 over the answers in ``trainval_ans2label``.
NLVR² identifiers are ``<split>-<set>-<pair>-<sentence>``: each sentence of a set is stated about every image pair
of the set (with different truth values), so the consistency metric (group by identifier without its third
field) is meaningful.

``benchmark_card.json`` records, per task and split, the counts and two blind baselines:
``majority`` — VQA: official VQA accuracy (mean over the 10 leave-one-out subsets of min(1, matches/3)) of always
answering the most frequent ``multiple_choice_answer`` of ``karpathy_train``; GQA: exact match of the most frequent
train+valid answer; NLVR²: accuracy of the majority train label; captions: n/a here (scoring needs Java;
``python -m vlrouting baselines`` adds the CIDEr of the majority caption, :mod:`vlrouting.baselines`) — and
``type_prior`` — the same with the most frequent train answer *per question type / statement template*, roughly the
best a model that ignores the image can do. Default sizes, seed 0 (1,016 images):

| task | train | val | test | majority (train / val / test) | type_prior (train / val / test) |
|------|-------|-----|------|-------------------------------|---------------------------------|
| VQA (karpathy_*) | 2,160 q / 360 img | 360 q / 60 img | 360 q / 60 img | "no": 0.243 / 0.236 / 0.234 | 0.464 / 0.487 / 0.459 |
| GQA (train+valid / testdev) | 960 + 240 q / 160 + 40 img | — | 360 q / 60 img | "no": 0.252 / 0.250 / 0.250 | 0.439 / 0.438 / 0.414 |
| NLVR² (train / valid / test) | 720 ex / 90 pairs | 192 / 24 | 192 / 24 | false: 0.504 / 0.490 / 0.500 | 0.553 / 0.542 / 0.568 |
| captions (Karpathy) | 360 img × 5 (train+restval) | 60 × 5 | 60 × 5 | n/a | n/a |

Everything is deterministic from the seed: the same seed gives byte-identical files (fixed JSON key order and
separators, fixed JPEG settings, no timestamps, sub-generators seeded by name). Every file is written atomically
(temporary file + rename); the card is written last. The root is always an argument (never derived from
``__file__``); a non-empty folder that is not a synthetic root is refused unless ``force``. When an existing
synthetic root is regenerated with different settings, its stale images and its ``<DS>/clip_features`` folders
(features of the old images) are removed.

Command: ``python -m vlrouting synthetic --root DIR [--seed 0] [--scale F] [--n-coco N ...]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vlrouting.data.layout import ANNOTATIONS, COLLECTIONS, FEATURE_FOLDERS, FILES, image_folders
from vlrouting.errors import ConfigError, DataError
from vlrouting.fileio import atomic_write_bytes

GENERATOR = "vlrouting.data.synthetic"
FORMAT_VERSION = 1
CARD_NAME = "benchmark_card.json"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 85, 215),
    "yellow": (235, 205, 40),
    "purple": (135, 60, 175),
    "orange": (245, 135, 30),
}
SHAPES = ("circle", "square", "triangle")
WARM = ("red", "yellow", "orange")  # NLVR² "warm-colored" / "cool-colored" statements
SIZES = {"small": 36, "large": 62}
IMAGE_SIZE = 224
JPEG_SETTINGS = {"format": "JPEG", "quality": 90, "subsampling": 0, "optimize": False, "progressive": False}

# Image / pair counts and questions per image (the default keeps extraction + a tiny training demo well under 10
# minutes on 2 CPU cores: 1,016 images).
DEFAULT_SIZES: dict[str, int] = {
    "n_coco": 480,  # COCO images: 2/3 Karpathy train (train2014), 1/12 restval, 1/8 val, 1/8 test (val2014)
    "n_vg": 200,  # VG images for GQA: 80 % train, 20 % valid
    "n_gqa": 60,  # GQA testdev images
    "n_nlvr": 138,  # NLVR² image pairs: 65 % train, 17.5 % dev, 17.5 % test, in sets of 3 pairs
    "vqa_per_image": 6,
    "gqa_per_image": 6,
    "nlvr_per_set": 8,  # statements per set; each is stated about every pair of the set
}
SCALED = ("n_coco", "n_vg", "n_gqa", "n_nlvr")
MINIMUM = {"n_coco": 4, "n_vg": 2, "n_gqa": 1, "n_nlvr": 3, "vqa_per_image": 1, "gqa_per_image": 1, "nlvr_per_set": 1}
PAIRS_PER_SET = 3

COCO_SPLITS = (("train", 2 / 3), ("restval", 1 / 12), ("val", 1 / 8), ("test", 1 / 8))
VG_SPLITS = (("train", 0.8), ("valid", 0.2))
NLVR_SPLITS = (("train", 0.65), ("dev", 0.175), ("test", 0.175))
NLVR_JSON = {"train": "train", "dev": "valid", "test": "test"}

NUMBER_WORDS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
COLOUR_SYNONYMS = {"purple": "violet", "yellow": "gold", "orange": "amber", "green": "lime", "blue": "navy", "red": "maroon"}
SHAPE_SYNONYMS = {"circle": "ball", "square": "box", "triangle": "pyramid"}


# --------------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str  # "small" | "large"
    col: int  # 0 = left, 1 = middle, 2 = right (distinct per scene)
    row: int  # 0 = top, 1 = centre, 2 = bottom

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


Scene = tuple  # tuple[Obj, ...] sorted left to right


def _sample_scene(rng: random.Random, n_min: int = 1, n_max: int = 3, same_colour_p: float = 0.0,
                  referable: bool = False) -> Scene:
    """1–3 objects in distinct columns; ``referable`` redraws until no two objects share colour and shape."""
    while True:
        scene = _draw_scene(rng, n_min, n_max, same_colour_p)
        if not referable or len({(o.colour, o.shape) for o in scene}) == len(scene):
            return scene


def _draw_scene(rng: random.Random, n_min: int, n_max: int, same_colour_p: float) -> Scene:
    n = rng.randint(n_min, n_max)
    cols = sorted(rng.sample(range(3), n))
    colours = [rng.choice(list(COLOURS)) for _ in range(n)]
    if n >= 2 and rng.random() < same_colour_p:
        i, j = rng.sample(range(n), 2)
        colours[j] = colours[i]
    return tuple(
        Obj(rng.choice(SHAPES), colours[k], rng.choice(list(SIZES)), cols[k], rng.randrange(3)) for k in range(n)
    )


def _render(scene: Scene, rng: random.Random, size: int = IMAGE_SIZE) -> bytes:
    """Draws the scene on a light-grey background and returns deterministic JPEG bytes."""
    from PIL import Image, ImageDraw

    grey = rng.randint(200, 238)
    tint = [max(0, min(255, grey + rng.randint(-6, 6))) for _ in range(3)]
    img = Image.new("RGB", (size, size), tuple(tint))
    draw = ImageDraw.Draw(img)
    cell = size / 3.0
    for obj in scene:
        side = SIZES[obj.size] * size / IMAGE_SIZE
        slack = max(0.0, (cell - side) / 2 - 2)
        cx = (obj.col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (obj.row + 0.5) * cell + rng.uniform(-slack, slack)
        colour = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in COLOURS[obj.colour])
        h = side / 2
        if obj.shape == "circle":
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=colour)
        elif obj.shape == "square":
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=colour)
        else:
            draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=colour)
    buf = io.BytesIO()
    img.save(buf, **JPEG_SETTINGS)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------- text helpers
def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _a(word: str) -> str:
    """The indefinite article for ``word`` ("an orange", "a red")."""
    return "an" if word[:1] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return shape + "s"


def _unique(scene: Scene, pred) -> Obj | None:
    hits = [o for o in scene if pred(o)]
    return hits[0] if len(hits) == 1 else None


def _ref(scene: Scene, obj: Obj, rng: random.Random) -> str | None:
    """Shortest unambiguous noun phrase for ``obj`` ("circle", "red circle", "large red circle"), or None."""
    options = [
        (obj.shape, lambda o: o.shape == obj.shape),
        (f"{obj.colour} {obj.shape}", lambda o: o.shape == obj.shape and o.colour == obj.colour),
        (f"{obj.size} {obj.shape}", lambda o: o.shape == obj.shape and o.size == obj.size),
        (f"{obj.size} {obj.colour} {obj.shape}", lambda o: (o.shape, o.colour, o.size) == (obj.shape, obj.colour, obj.size)),
    ]
    valid = [text for text, pred in options if _unique(scene, pred) is obj]
    if not valid:
        return None
    # Mostly the shortest phrase, sometimes a longer one, so a model cannot read uniqueness off the wording.
    return valid[0] if rng.random() < 0.7 or len(valid) == 1 else rng.choice(valid[1:])


COL_WORDS = ("on the left", "in the middle", "on the right")
ROW_WORDS = ("at the top", "in the centre", "at the bottom")


# --------------------------------------------------------------------------------------------------- captions
def _captions(scene: Scene, rng: random.Random) -> list[str]:
    objs = list(scene)
    n = len(objs)

    def a(o: Obj, size: bool = False) -> str:
        words = ([o.size] if size else []) + [o.colour, o.shape]
        return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)

    def listing(items: list[str]) -> str:
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    pool = [
        lambda: f"{listing([a(o) for o in objs])} on a grey background.",
        lambda: (f"a single {objs[0].colour} {objs[0].shape}." if n == 1
                 else f"{COUNT_WORDS[n]} shapes: {listing([a(o, size=True) for o in objs])}."),
        lambda: (f"{a(objs[0])} {COL_WORDS[objs[0].col]} of the picture." if n == 1
                 else f"{a(objs[0])} to the left of {a(objs[1])}" + (f" and {a(objs[2])}." if n == 3 else ".")),
        lambda: f"a picture with {listing(sorted({o.colour for o in objs}))} "
                + ("shape." if n == 1 else "shapes." if len({o.colour for o in objs}) > 1 else "shapes of one color."),
        lambda: listing([f"{a(o, size=True)} {ROW_WORDS[o.row]}" for o in objs]) + ".",
        lambda: (f"there is only one shape, {a(objs[0], size=True)}." if n == 1
                 else f"there are {COUNT_WORDS[n]} shapes on a plain background."),
        lambda: f"{listing([a(o) for o in reversed(objs)])} on a light background."
                + ("" if n == 1 else f" The {objs[-1].shape} is on the right."),
        lambda: f"{a(objs[0], size=True)} {COL_WORDS[objs[0].col]}"
                + ("." if n == 1 else f" and {a(objs[-1], size=True)} {COL_WORDS[objs[-1].col]}."),
    ]
    chosen = rng.sample(range(len(pool)), 5)
    return [_cap(pool[i]()) for i in chosen]


# --------------------------------------------------------------------------------------------------- VQA
def _vqa_question(kind: str, scene: Scene, rng: random.Random):
    """Returns (question, answer, question_type, answer_type) or None when ``kind`` does not apply."""
    if kind == "color":
        obj = rng.choice(scene)
        ref = _ref(scene, obj, rng)
        if ref is None or obj.colour in ref:
            return None
        return f"what color is the {ref}?", obj.colour, "what color is the", "other"
    if kind == "shape":
        obj = rng.choice(scene)
        if _unique(scene, lambda o: o.colour == obj.colour) is not obj:
            return None
        noun = rng.choice(("object", "shape", "thing"))
        return f"what shape is the {obj.colour} {noun}?", obj.shape, "what shape is the", "other"
    if kind == "count":
        if rng.random() < 0.6:
            q = rng.choice(("how many shapes are there?", "how many objects are in the picture?",
                            "how many shapes are in the image?"))
            return q, str(len(scene)), "how many", "number"
        shape = rng.choice(SHAPES)
        return f"how many {_plural(shape)} are there?", str(sum(o.shape == shape for o in scene)), "how many", "number"
    if kind == "exist":
        if rng.random() < 0.5:
            obj = rng.choice(scene)
            return f"is there {_a(obj.colour)} {obj.colour} {obj.shape}?", "yes", "is there a", "yes/no"
        present = {(o.colour, o.shape) for o in scene}
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        c, s = rng.choice(absent)
        return f"is there {_a(c)} {c} {s}?", "no", "is there a", "yes/no"
    if kind == "is":
        obj = rng.choice(scene)
        ref = _ref(scene, obj, rng)
        if ref is None or obj.colour in ref:
            return None
        if rng.random() < 0.5:
            return f"is the {ref} {obj.colour}?", "yes", "is the", "yes/no"
        other = rng.choice([c for c in COLOURS if c != obj.colour])
        return f"is the {ref} {other}?", "no", "is the", "yes/no"
    raise AssertionError(kind)


VQA_KINDS = ("color", "shape", "count", "exist", "is")


def _noise_answer(answer: str, answer_type: str, rng: random.Random) -> str:
    """A plausible wrong or differently-worded human answer."""
    if answer_type == "yes/no":
        return "no" if answer == "yes" else "yes"
    if answer_type == "number":
        if rng.random() < 0.5:
            return NUMBER_WORDS[answer]  # normalises back to the digit in the official evaluation
        return str(max(0, int(answer) + rng.choice((-1, 1))))
    if answer in COLOURS:
        return COLOUR_SYNONYMS[answer] if rng.random() < 0.5 else rng.choice([c for c in COLOURS if c != answer])
    return SHAPE_SYNONYMS[answer] if rng.random() < 0.5 else rng.choice([s for s in SHAPES if s != answer])


def _human_answers(answer: str, answer_type: str, rng: random.Random) -> list[dict]:
    p_err = rng.choices((0.0, 0.1, 0.25), weights=(0.55, 0.3, 0.15))[0]
    out = []
    for i in range(10):
        ans = _noise_answer(answer, answer_type, rng) if rng.random() < p_err else answer
        conf = rng.choices(("yes", "maybe", "no"), weights=(0.85, 0.12, 0.03))[0]
        out.append({"answer": ans, "answer_confidence": conf, "answer_id": i + 1})
    return out


_ARTICLES = {"a", "an", "the"}
_WORD_NUMBERS = {v: k for k, v in NUMBER_WORDS.items()}


def normalize_answer(ans: str) -> str:
    """Light version of the official VQA answer processing (lower case, punctuation, number words, articles)."""
    ans = re.sub(r"[^\w\s/]", "", ans.lower().replace("\n", " ").replace("\t", " ")).strip()
    words = [_WORD_NUMBERS.get(w, w) for w in ans.split() if w not in _ARTICLES]
    return " ".join(words)


def vqa_score(count: int) -> float:
    """LXMERT / VL-Adapter soft score of an answer given by ``count`` of the 10 annotators."""
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0


def vqa_accuracy(pred: str, answers: list[str]) -> float:
    """Official VQA accuracy: mean over the 10 leave-one-out subsets of min(1, matches / 3)."""
    pred = normalize_answer(pred)
    gts = [normalize_answer(a) for a in answers]
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


# --------------------------------------------------------------------------------------------------- GQA
def _gqa_question(kind: str, scene: Scene, rng: random.Random, want: str):
    """Returns (question, answer) or None. ``want`` ("yes"/"no") steers the yes/no kinds."""
    left_of = lambda a, b: a.col < b.col  # noqa: E731
    if kind == "rel_color" or kind == "rel_shape":
        ref = rng.choice(scene)
        side = rng.choice(("left", "right"))
        cands = [o for o in scene if (left_of(o, ref) if side == "left" else left_of(ref, o))]
        phrase = _ref(scene, ref, rng)
        if len(cands) != 1 or phrase is None:
            return None
        tgt = cands[0]
        if kind == "rel_color":
            return f"what color is the shape to the {side} of the {phrase}?", tgt.colour
        if phrase.endswith(tgt.shape):
            return None
        return f"what shape is the {tgt.colour} object on the {side} of the {phrase}?", tgt.shape
    if kind == "side":
        obj = rng.choice(scene)
        phrase = _ref(scene, obj, rng)
        if phrase is None or obj.col == 1:
            return None
        return rng.choice((f"on which side is the {phrase}?", f"which side of the image is the {phrase} on?")), (
            "left" if obj.col == 0 else "right")
    if kind == "large_color":
        size = rng.choice(("large", "small"))
        obj = _unique(scene, lambda o: o.size == size)
        if obj is None or len(scene) < 2:
            return None
        return f"what color is the {size} shape?", obj.colour
    if len(scene) < 2:
        return None
    a, b = rng.sample(scene, 2)
    pa, pb = _ref(scene, a, rng), _ref(scene, b, rng)
    if pa is None or pb is None:
        return None
    if kind == "size":
        forms = [(f"is the {pa} bigger than the {pb}?", a.size == "large" and b.size == "small"),
                 (f"is the {pa} smaller than the {pb}?", a.size == "small" and b.size == "large"),
                 (f"are the {pa} and the {pb} the same size?", a.size == b.size)]
    elif kind == "same_color":
        forms = [(f"are the {pa} and the {pb} the same color?", a.colour == b.colour),
                 (f"do the {pa} and the {pb} have different colors?", a.colour != b.colour)]
    elif kind == "position":
        forms = [(f"is the {pa} to the left of the {pb}?", left_of(a, b)),
                 (f"is the {pa} to the right of the {pb}?", left_of(b, a)),
                 (f"is the {pa} above the {pb}?", a.row < b.row),
                 (f"is the {pa} below the {pb}?", a.row > b.row)]
    else:
        raise AssertionError(kind)
    ok = [q for q, truth in forms if ("yes" if truth else "no") == want]
    return (rng.choice(ok), want) if ok else None


GQA_OPEN = ("rel_color", "rel_shape", "side", "large_color")
GQA_YESNO = ("size", "same_color", "position")


# --------------------------------------------------------------------------------------------------- NLVR²
def _nlvr_statement(kind: str, rng: random.Random):
    """Returns (surface template, text, truth function of (left scene, right scene)).

    Every kind has wordings of opposite sense, so that candidates come out true as well as false and the labels can
    be balanced per surface template (a model reading only the sentence then stays near 50 %).
    """
    side = rng.choice(("left", "right"))

    def sided(f):  # f(this, other) -> truth as a function of (L, R)
        return (lambda L, R: f(L, R)) if side == "left" else (lambda L, R: f(R, L))

    if kind.startswith("tone_"):  # warm (red, orange, yellow) vs cool (green, blue, purple) colours
        tone = rng.choice(("warm", "cool"))
        has = lambda s: any((o.colour in WARM) == (tone == "warm") for o in s)  # noqa: E731
        noun = f"{tone}-colored shape"
        if kind == "tone_side":
            if rng.random() < 0.5:
                return f"{kind}:has", f"the {side} image contains a {noun}.", sided(lambda a, b: has(a))
            return f"{kind}:not", f"there is no {noun} in the {side} image.", sided(lambda a, b: not has(a))
        if kind == "tone_both":
            if rng.random() < 0.5:
                return f"{kind}:both", f"both images contain a {noun}.", lambda L, R: has(L) and has(R)
            return f"{kind}:neither", f"neither image contains a {noun}.", lambda L, R: not has(L) and not has(R)
        if rng.random() < 0.5:
            return f"{kind}:one", f"exactly one of the images contains a {noun}.", lambda L, R: has(L) != has(R)
        return f"{kind}:some", f"at least one image contains a {noun}.", lambda L, R: has(L) or has(R)
    if kind == "match_colour":  # compares the two images: no colour word to ground
        colours = lambda s: {o.colour for o in s}  # noqa: E731
        if rng.random() < 0.5:
            return f"{kind}:same", "the two images share a color.", lambda L, R: bool(colours(L) & colours(R))
        return f"{kind}:diff", "no color appears in both images.", lambda L, R: not colours(L) & colours(R)
    raise AssertionError(kind)


# Statement kinds, cycled through per set. Their truth is read off the images (warm vs cool colours, a colour shared
# by both images) given a few template words, and NLVR² images hold one shape each (NLVR_MAX_OBJECTS). Statements
# that must match a named colour or shape against the images ("the left image contains a red circle"), count
# comparisons and 3-shape images left a tiny CLIP-BART at the majority label after thousands of steps, while these
# reach ~90 % validation accuracy in a few hundred (issue-7 note), so the task can show that training works.
NLVR_KINDS = ("tone_side", "tone_both", "tone_one", "match_colour")
NLVR_MAX_OBJECTS = 1


def _share_colour(left: Scene, right: Scene, rng: random.Random) -> Scene:
    """With probability 1/2 one object of ``right`` takes the colour of one object of ``left``, so that "the two
    images share a color" is true about half the time instead of ~1/6."""
    if rng.random() >= 0.5:
        return right
    objs = list(right)
    k = rng.randrange(len(objs))
    objs[k] = dataclasses.replace(objs[k], colour=rng.choice(left).colour)
    return tuple(objs)


# --------------------------------------------------------------------------------------------------- utilities
def _split_counts(n: int, fractions, name: str) -> list[int]:
    """Largest-remainder split of ``n`` with at least one item per part."""
    k = len(fractions)
    if n < k:
        raise ConfigError(f"--{name.replace('_', '-')} {n} is too small: it needs at least {k} to fill every split.")
    raw = [n * f for _, f in fractions]
    counts = [max(1, int(r)) for r in raw]
    while sum(counts) < n:
        i = max(range(k), key=lambda j: raw[j] - counts[j])
        counts[i] += 1
    while sum(counts) > n:
        i = max(range(k), key=lambda j: counts[j] - raw[j] if counts[j] > 1 else -1e9)
        counts[i] -= 1
    return counts


def _dumps(obj, pretty: bool = False) -> bytes:
    if pretty:
        return (json.dumps(obj, indent=2, ensure_ascii=True) + "\n").encode()
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def _answer_tables(counts: Counter, min_count: int) -> tuple[dict, list]:
    answers = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return {a: i for i, a in enumerate(answers)}, answers


def _consistency_key(identifier: str) -> str:
    """NLVR² groups a sentence's examples by the identifier without its third field (the pair index)."""
    parts = identifier.split("-")
    return "-".join(parts[:2] + parts[3:])


def _round(x: float) -> float:
    return round(float(x), 4)


# --------------------------------------------------------------------------------------------------- generator
def resolve_sizes(scale: float = 1.0, **sizes) -> dict[str, int]:
    unknown = sorted(set(sizes) - set(DEFAULT_SIZES))
    if unknown:
        raise ConfigError(f"unknown size option(s) {', '.join(unknown)}; valid: {', '.join(DEFAULT_SIZES)}.")
    if not scale > 0:
        raise ConfigError(f"--scale must be positive, got {scale}.")
    out = {}
    for key, default in DEFAULT_SIZES.items():
        value = sizes.get(key)
        if value is None:
            value = max(MINIMUM[key], round(default * scale)) if key in SCALED else default
        value = int(value)
        if value < MINIMUM[key]:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least {MINIMUM[key]}, got {value}.")
        out[key] = value
    return out


def _check_root(root: Path, force: bool) -> dict | None:
    """Returns the card of a synthetic root (or None); refuses foreign non-empty folders unless ``force``."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--root {root} is a file; pass a folder for the synthetic benchmark.")
    if not root.exists() or not any(root.iterdir()):
        return None
    card_path = root / CARD_NAME
    try:
        card = json.loads(card_path.read_text())
        if card.get("generator") == GENERATOR:
            return card
    except (OSError, ValueError):
        pass
    if force:
        return None
    raise ConfigError(f"--root {root} is not empty and holds no synthetic {CARD_NAME}; choose an empty folder "
                      f"(or pass --force to write into it anyway).")


def generate(root, seed: int = 0, *, scale: float = 1.0, force: bool = False, verbose: bool = False,
             **sizes) -> dict:
    """Writes the synthetic benchmark under ``root`` and returns its card (also saved as ``benchmark_card.json``).

    ``sizes``: any of :data:`DEFAULT_SIZES` (``n_coco``, ``n_vg``, ``n_gqa``, ``n_nlvr`` image pairs,
    ``vqa_per_image``, ``gqa_per_image``, ``nlvr_per_set``); image counts not given are ``scale`` × default.
    """
    root = Path(root)
    sz = resolve_sizes(scale, **sizes)
    old_card = _check_root(root, force)  # a previous card of ours (maybe an "incomplete" marker), or None
    seed = int(seed)

    def sub_rng(name: str) -> random.Random:
        return random.Random(f"{GENERATOR}:{seed}:{name}")

    # Files are written as they are made (atomically each). Until the new card is written last, the card says the
    # root is incomplete and remembers the last complete card: features are kept only if the new card equals it.
    if old_card is not None:
        previous = old_card.get("previous") if old_card.get("incomplete") else old_card
    else:
        previous = None
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / CARD_NAME, _dumps({"generator": GENERATOR, "incomplete": True, "previous": previous},
                                                pretty=True))
    files: dict[Path, int] = {}

    def put(rel: str, data: bytes) -> None:
        atomic_write_bytes(root / rel, data, durable=False)  # regenerable; the card, written last, is durable
        files[root / rel] = len(data)

    # ---- COCO images, Karpathy split and captions
    rng = sub_rng("coco")
    n_tr, n_rv, n_va, n_te = _split_counts(sz["n_coco"], COCO_SPLITS, "n_coco")
    cocoids = sorted(rng.sample(range(9, 581930), sz["n_coco"]))
    rng.shuffle(cocoids)
    karpathy_split = ["train"] * n_tr + ["restval"] * n_rv + ["val"] * n_va + ["test"] * n_te
    coco_images = []  # (img_id, cocoid, karpathy split, scene)
    karpathy = []
    sentid = 0
    for imgid, (cocoid, ksplit) in enumerate(zip(cocoids, karpathy_split)):
        folder = "train2014" if ksplit == "train" else "val2014"
        img_id = f"COCO_{folder}_{cocoid:012d}"
        scene = _sample_scene(rng)
        put(f"{_images('COCO', folder)}/{img_id}.jpg", _render(scene, rng))
        coco_images.append((img_id, cocoid, ksplit, scene))
        sentences = []
        for cap in _captions(scene, rng):
            tokens = re.findall(r"[a-z0-9]+", cap.lower())
            sentences.append({"tokens": tokens, "raw": cap, "imgid": imgid, "sentid": sentid})
            sentid += 1
        karpathy.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename": f"{img_id}.jpg",
                         "imgid": imgid, "split": ksplit, "sentences": sentences, "cocoid": cocoid})
    put(ANNOTATIONS["coco_captions"]["train"][0].annotation, _dumps({"images": karpathy, "dataset": "coco"}))

    # ---- VQA over COCO images
    rng = sub_rng("vqa")
    vqa = {"train": [], "val": [], "test": []}
    official = {"train2014": [], "val2014": []}
    vqa_kind = {}  # question_id -> kind, for the card
    for img_id, cocoid, ksplit, scene in coco_images:
        split = {"train": "train", "restval": "train", "val": "val", "test": "test"}[ksplit]
        seen = set()
        kinds = list(VQA_KINDS)
        rng.shuffle(kinds)
        k = 0
        for attempt in range(sz["vqa_per_image"] * 8):
            if k >= sz["vqa_per_image"]:
                break
            qa = _vqa_question(kinds[attempt % len(kinds)], scene, rng)
            if qa is None or qa[0] in seen:
                continue
            seen.add(qa[0])
            question, answer, qtype, atype = qa
            qid = cocoid * 1000 + k
            k += 1
            answers = _human_answers(answer, atype, rng)
            norm = Counter(normalize_answer(a["answer"]) for a in answers)
            mc = max(sorted(norm), key=lambda a: norm[a])
            official["train2014" if ksplit == "train" else "val2014"].append({
                "question_type": qtype, "multiple_choice_answer": mc, "answers": answers, "image_id": cocoid,
                "answer_type": atype, "question_id": qid})
            vqa[split].append({"answer_type": atype, "img_id": img_id, "question_id": qid, "question_type": qtype,
                               "sent": _cap(question), "answers": answers, "_norm": norm, "_mc": mc})
            vqa_kind[qid] = qtype
    trainval = Counter()
    for split in ("train", "val"):
        for rec in vqa[split]:
            trainval.update(rec["_norm"])
    vqa_ans2label, vqa_label2ans = _answer_tables(trainval, min_count=3)
    for split, recs in vqa.items():
        out = []
        for rec in recs:
            norm, mc = rec.pop("_norm"), rec.pop("_mc")
            rec["label"] = {a: vqa_score(c) for a, c in sorted(norm.items(), key=lambda x: (-x[1], x[0]))
                            if a in vqa_ans2label}
            rec["is_topk_optimal"] = mc in vqa_ans2label
            out.append({key: rec[key] for key in ("answer_type", "img_id", "label", "question_id", "question_type",
                                                  "sent", "is_topk_optimal", "answers")})
        vqa[split] = out
        put(ANNOTATIONS["vqa"][split][0].annotation, _dumps(out))
    for sub, anns in official.items():
        put(FILES[f"vqa_official_{sub[:-4]}"], _dumps({
            "info": {"description": "vlrouting synthetic VQA (VQAv2 annotation format)", "version": "2.0"},
            "license": {"name": "synthetic", "url": ""}, "data_subtype": sub, "data_type": "mscoco",
            "annotations": anns}))
    put(FILES["vqa_ans2label"], _dumps(vqa_ans2label))
    put(FILES["vqa_label2ans"], _dumps(vqa_label2ans))

    # ---- GQA over VG (train, valid) and GQA (testdev) images
    rng = sub_rng("gqa")
    n_gtr, n_gva = _split_counts(sz["n_vg"], VG_SPLITS, "n_vg")
    vg_ids = [str(i) for i in sorted(rng.sample(range(1, 2417998), sz["n_vg"]))]
    rng.shuffle(vg_ids)
    td_ids = [f"n{i}" for i in sorted(rng.sample(range(1000, 600000), sz["n_gqa"]))]
    n_questions = (sz["n_vg"] + sz["n_gqa"]) * sz["gqa_per_image"]
    gqa_qids = [f"{i:08d}" for i in sorted(rng.sample(range(10 ** 8), n_questions))]
    rng.shuffle(gqa_qids)
    gqa = {"train": [], "valid": [], "testdev": []}
    gqa_kind = {}
    yes_no_toggle = {"train": 0, "valid": 0, "testdev": 0}
    jobs = ([("train", i, _images("VG", "train")) for i in vg_ids[:n_gtr]]
            + [("valid", i, _images("VG", "train")) for i in vg_ids[n_gtr:]]
            + [("testdev", i, _images("GQA", "testdev")) for i in td_ids])
    qi = 0
    for split, img_id, folder in jobs:
        scene = _sample_scene(rng, n_min=2, n_max=3, same_colour_p=0.35, referable=True)
        put(f"{folder}/{img_id}.jpg", _render(scene, rng))
        seen = set()
        k = 0
        first = rng.randrange(2)
        for attempt in range(sz["gqa_per_image"] * 16):
            if k >= sz["gqa_per_image"]:
                break
            # Alternate open and yes/no questions; after 8 failed tries per slot either kind will do.
            yes_no = (k + first) % 2 == 1 if attempt < 8 * (k + 1) else rng.random() < 0.5
            kind = rng.choice(GQA_YESNO if yes_no else GQA_OPEN)
            want = "yes" if yes_no_toggle[split] % 2 == 0 else "no"
            qa = _gqa_question(kind, scene, rng, want)
            if qa is None or qa[0] in seen:
                continue
            if yes_no:
                yes_no_toggle[split] += 1
            seen.add(qa[0])
            qid = gqa_qids[qi]
            qi += 1
            k += 1
            gqa[split].append({"img_id": img_id, "label": {qa[1]: 1.0}, "question_id": qid, "sent": _cap(qa[0])})
            gqa_kind[qid] = kind
    gqa_files = {"train": ANNOTATIONS["gqa"]["train"][0].annotation, "valid": ANNOTATIONS["gqa"]["train"][1].annotation,
                 "testdev": ANNOTATIONS["gqa"]["test"][0].annotation}
    for split, recs in gqa.items():
        put(gqa_files[split], _dumps(recs))
    gqa_counts = Counter(next(iter(r["label"])) for s in ("train", "valid") for r in gqa[s])
    gqa_ans2label, gqa_label2ans = _answer_tables(gqa_counts, min_count=1)
    put(FILES["gqa_ans2label"], _dumps(gqa_ans2label))
    put(FILES["gqa_label2ans"], _dumps(gqa_label2ans))

    # ---- NLVR² pairs, sets and statements
    rng = sub_rng("nlvr")
    pair_counts = _split_counts(sz["n_nlvr"], NLVR_SPLITS, "n_nlvr")
    nlvr = {}
    nlvr_kind = {}
    balance = Counter()  # (#true − #false) per surface template, steers the choice of statements
    for (split, _), n_pairs in zip(NLVR_SPLITS, pair_counts):
        n_sets = -(-n_pairs // PAIRS_PER_SET)
        set_ids = sorted(rng.sample(range(0, 12000), n_sets))
        records = []
        pairs_left = n_pairs
        for set_id in set_ids:
            n_here = min(PAIRS_PER_SET, pairs_left)
            pairs_left -= n_here
            pairs = []
            for p in range(n_here):
                left = _sample_scene(rng, n_max=NLVR_MAX_OBJECTS)
                right = _share_colour(left, _sample_scene(rng, n_max=NLVR_MAX_OBJECTS), rng)
                base = f"{split}-{set_id}-{p}"
                put(f"{_images('nlvr', split)}/{base}-img0.jpg", _render(left, rng))
                put(f"{_images('nlvr', split)}/{base}-img1.jpg", _render(right, rng))
                pairs.append((base, left, right))
            texts = set()
            for s in range(sz["nlvr_per_set"]):
                kind = NLVR_KINDS[(s + set_id) % len(NLVR_KINDS)]
                best = None
                for _ in range(24):
                    template, text, truth = _nlvr_statement(kind, rng)
                    if text in texts:
                        continue
                    labels = [int(truth(L, R)) for _, L, R in pairs]
                    target_true = n_here / 2 - balance[template] / 2  # pulls the template's balance back to 0
                    mixed = 0 < sum(labels) < len(labels)
                    score = (abs(sum(labels) - target_true), not mixed)
                    if best is None or score < best[0]:
                        best = (score, template, text, labels)
                if best is None:
                    continue
                _, template, text, labels = best
                texts.add(text)
                balance[template] += sum(labels) - (len(labels) - sum(labels))
                kind = template
                for (base, _, _), label in zip(pairs, labels):
                    records.append({"identifier": f"{base}-{s}", "img0": f"{base}-img0", "img1": f"{base}-img1",
                                    "label": label, "sent": _cap(text), "uid": None, "_kind": kind})
        records.sort(key=lambda r: [int(x) if x.isdigit() else x for x in r["identifier"].split("-")])
        for i, r in enumerate(records):  # uids in file order
            r["uid"] = f"nlvr2_{NLVR_JSON[split]}_{i}"
            nlvr_kind[r["uid"]] = r.pop("_kind")
        nlvr[NLVR_JSON[split]] = records
        put(ANNOTATIONS["nlvr"][{"dev": "val"}.get(split, split)][0].annotation, _dumps(records))

    # ---- card
    card = _card(seed, sz, files, root, karpathy, vqa, vqa_kind, vqa_ans2label, gqa, gqa_kind, gqa_ans2label, nlvr,
                 nlvr_kind)
    card_bytes = _dumps(card, pretty=True)

    # ---- clean stale files of a previous synthetic run; the card goes last
    if old_card is not None:
        removed = _remove_stale(root, set(files), features_too=previous != card)
        if verbose and removed:
            print(f"removed {removed} stale item(s) of the previous synthetic run in {root}")
    atomic_write_bytes(root / CARD_NAME, card_bytes)
    return card


def _images(collection: str, split: str) -> str:
    """The image folder the generator writes a collection's split to (the layout's first candidate)."""
    return COLLECTIONS[collection].splits[split][0]


def _remove_stale(root: Path, written: set[Path], features_too: bool) -> int:
    removed = 0
    for folder in image_folders():
        d = root / folder
        if d.is_dir():
            for p in d.glob("*.jpg"):
                if p not in written:
                    p.unlink()
                    removed += 1
    if features_too:  # features of the old images would silently mismatch the new ones
        for ds in COLLECTIONS:
            for kind_folder in FEATURE_FOLDERS.values():
                d = root / ds / kind_folder
                if d.is_dir():
                    shutil.rmtree(d)
                    removed += 1
    return removed


def _card(seed, sz, files, root, karpathy, vqa, vqa_kind, vqa_ans2label, gqa, gqa_kind, gqa_ans2label, nlvr,
          nlvr_kind) -> dict:
    images = Counter()
    for path in files:
        if path.suffix == ".jpg":
            images[str(path.parent.relative_to(root))] += 1

    # VQA: majority of the multiple-choice answers of karpathy_train, scored with the official accuracy.
    def mc(rec):
        norm = Counter(normalize_answer(a["answer"]) for a in rec["answers"])
        return max(sorted(norm), key=lambda a: norm[a])

    train_mc = Counter(mc(r) for r in vqa["train"])
    vqa_major = max(sorted(train_mc), key=lambda a: train_mc[a])
    per_type = {}
    for r in vqa["train"]:
        per_type.setdefault(r["question_type"], Counter())[mc(r)] += 1
    type_major = {t: max(sorted(c), key=lambda a: c[a]) for t, c in per_type.items()}

    def vqa_acc(recs, pick):
        if not recs:
            return None
        return _round(sum(vqa_accuracy(pick(r), [a["answer"] for a in r["answers"]]) for r in recs) / len(recs))

    vqa_card = {"majority_answer": vqa_major, "answer_vocab": len(vqa_ans2label), "splits": {}}
    for split, recs in vqa.items():
        yn = [r for r in recs if r["answer_type"] == "yes/no"]
        vqa_card["splits"][f"karpathy_{split}"] = {
            "questions": len(recs), "images": len({r["img_id"] for r in recs}),
            "yes_fraction_of_yes_no": _round(sum(mc(r) == "yes" for r in yn) / max(1, len(yn))),
            "question_types": dict(sorted(Counter(r["question_type"] for r in recs).items())),
            "majority": vqa_acc(recs, lambda r: vqa_major),
            "type_prior": vqa_acc(recs, lambda r: type_major.get(r["question_type"], vqa_major)),
        }

    # GQA: exact match of the majority answer of train + valid (VL-Adapter trains on both).
    def gans(r):
        return next(iter(r["label"]))

    gtrain = [r for s in ("train", "valid") for r in gqa[s]]
    gcount = Counter(gans(r) for r in gtrain)
    gqa_major = max(sorted(gcount), key=lambda a: gcount[a])
    gkind = {}
    for r in gtrain:
        gkind.setdefault(gqa_kind[r["question_id"]], Counter())[gans(r)] += 1
    gkind_major = {k: max(sorted(c), key=lambda a: c[a]) for k, c in gkind.items()}
    gqa_card = {"majority_answer": gqa_major, "answer_vocab": len(gqa_ans2label), "splits": {}}
    for split, recs in gqa.items():
        yn = [r for r in recs if gans(r) in ("yes", "no")]
        gqa_card["splits"][split] = {
            "questions": len(recs), "images": len({r["img_id"] for r in recs}),
            "yes_fraction_of_yes_no": _round(sum(gans(r) == "yes" for r in yn) / max(1, len(yn))),
            "majority": _round(sum(gans(r) == gqa_major for r in recs) / max(1, len(recs))),
            "type_prior": _round(sum(gans(r) == gkind_major.get(gqa_kind[r["question_id"]], gqa_major)
                                     for r in recs) / max(1, len(recs))),
        }

    # NLVR²: majority train label.
    ntrain = Counter(r["label"] for r in nlvr["train"])
    nlvr_major = max(sorted(ntrain), key=lambda a: ntrain[a])
    nkind = {}
    for r in nlvr["train"]:
        nkind.setdefault(nlvr_kind[r["uid"]], Counter())[r["label"]] += 1
    nkind_major = {k: max(sorted(c), key=lambda a: c[a]) for k, c in nkind.items()}
    nlvr_card = {"majority_label": nlvr_major, "splits": {}}
    for split, recs in nlvr.items():
        n = max(1, len(recs))
        nlvr_card["splits"][split] = {
            "examples": len(recs), "image_pairs": len({r["img0"] for r in recs}),
            "sentences": len({_consistency_key(r["identifier"]) for r in recs}),
            "true_fraction": _round(sum(r["label"] for r in recs) / n),
            "majority": _round(sum(r["label"] == nlvr_major for r in recs) / n),
            "type_prior": _round(sum(r["label"] == nkind_major.get(nlvr_kind[r["uid"]], nlvr_major)
                                     for r in recs) / n),
        }

    caption_card = {"splits": {}}
    for ksplit, name in (("train", "train"), ("restval", "train"), ("val", "val"), ("test", "test")):
        entry = caption_card["splits"].setdefault(name, {"images": 0, "captions": 0, "majority": None})
        for im in karpathy:
            if im["split"] == ksplit:
                entry["images"] += 1
                entry["captions"] += len(im["sentences"])
    caption_card["note"] = "train = Karpathy train + restval; no majority baseline for captions (n/a)"

    return {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "sizes": sz,
        "image_size": IMAGE_SIZE,
        "images": dict(sorted(images.items())),
        "total_images": sum(images.values()),
        "baseline_definitions": {
            "majority": "VQA: official VQA accuracy of always answering the most frequent karpathy_train "
                        "multiple_choice_answer; GQA: exact match of the most frequent train+valid answer; "
                        "NLVR2: accuracy of the majority train label; captions: n/a",
            "type_prior": "the same with the most frequent train answer per question type (VQA question_type, "
                          "GQA and NLVR2 generator template): about the best a model that ignores the image can do",
        },
        "vqa": vqa_card,
        "gqa": gqa_card,
        "nlvr": nlvr_card,
        "caption": caption_card,
    }


# --------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlrouting synthetic",
                                description="Write the synthetic four-task benchmark (VL-Adapter layout).")
    p.add_argument("--root", required=True, help="datasets root to write (e.g. datasets_synthetic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every default image count")
    for key, default in DEFAULT_SIZES.items():
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None, dest=key,
                       help=f"default {default}" + (" × scale" if key in SCALED else ""))
    p.add_argument("--force", action="store_true", help="write into a non-empty folder that is not a synthetic root")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = {k: getattr(args, k) for k in DEFAULT_SIZES if getattr(args, k) is not None}
    try:
        card = generate(args.root, seed=args.seed, scale=args.scale, force=args.force, verbose=True, **sizes)
    except OSError as exc:
        raise DataError(f"could not write the synthetic benchmark under {args.root} ({exc}); check the path and "
                        f"free disk space.") from exc
    v, g, n = card["vqa"]["splits"], card["gqa"]["splits"], card["nlvr"]["splits"]
    print(f"wrote the synthetic benchmark (seed {card['seed']}) to {args.root}: {card['total_images']} images; "
          f"VQA {sum(s['questions'] for s in v.values())} questions, GQA {sum(s['questions'] for s in g.values())}, "
          f"NLVR2 {sum(s['examples'] for s in n.values())} examples, "
          f"{card['caption']['splits']['train']['images'] + card['caption']['splits']['val']['images'] + card['caption']['splits']['test']['images']} captioned images")
    print(f"majority baselines: VQA karpathy_test {v['karpathy_test']['majority']}, GQA testdev "
          f"{g['testdev']['majority']}, NLVR2 test {n['test']['majority']} (details in {CARD_NAME})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
