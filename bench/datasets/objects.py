"""The three object domains over nine coarse classes: ``photo``, ``clipart``, ``emoji``.

Each source's folders (or emoji subcategories) map to the classes by the tables below; the same
tables, with the reasons for each exclusion, are in ``README.md`` next to this file. A class is
the everyday (culinary, for food) sense of the word, applied the same way in every source:
tomato is a vegetable and avocado a fruit everywhere, whatever one source's taxonomy says.

- photo: Debian ``tuxpaint-stamps-default``, photo cut-outs with alpha. Folders named ``cartoon``
  are drawings, not photos, and are left out (see ``images.tuxpaint_photos``).
- clipart: Debian ``openclipart-png``: vector drawings rendered to PNG, some huge (decoded reduced).
  Byte-identical files filed under two folders are kept once.
- emoji: npm ``emoji-datasource`` Google (Noto, Apache-2.0) sheet ``img/google/sheets/32.png``,
  the only Google sheet the package ships; cells at ``(sheet_x, sheet_y) * 34 + 1``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.bench.datasets.domain import (
    FORMAT,
    OBJECT_FILL,
    OBJECT_SIDE,
    Domain,
    DomainSource,
    fingerprint,
    frame_object,
    listing,
)
from edge_runtime.bench.datasets.images import GREY, TUXPAINT_STAMPS, read_png, tuxpaint_photos
from edge_runtime.errors import EdgeRuntimeError

CLASSES = ("mammal", "bird", "insect", "fish", "fruit", "vegetable", "flower", "vehicle", "musical instrument")
OPENCLIPART = Path("/usr/share/openclipart/png")
EMOJI_DATASOURCE = Path(__file__).resolve().parents[2] / ".data" / "npm" / "node_modules" / "emoji-datasource"

# photo: class -> tuxpaint stamp folders (searched recursively; cartoon folders never count).
PHOTO_FOLDERS = {
    "mammal": ("animals/mammals", "animals/marsupials"),
    "bird": ("animals/birds",),
    "insect": ("animals/insects",),
    "fish": ("animals/fish",),
    "fruit": ("food/fruit",),
    "vegetable": ("food/vegetables",),
    "flower": ("plants/flowers",),
    "vehicle": ("vehicles", "military/vehicles"),
    "musical instrument": ("hobbies/music",),
}
PHOTO_EXCLUDE = frozenset(
    {
        "animals/mammals/bears/toys/edward_bear.png",  # a teddy bear
        "animals/insects/Brown_slug.png",  # a mollusc
        "animals/insects/Woodlouse.png",  # a crustacean
        "animals/fish/lobster.png",  # crustaceans
        "animals/fish/shrimp.png",
        "plants/flowers/plastic/chuvanna_plastic_poo.png",  # not a flower
        "vehicles/7spoke256.png",  # wheels, not vehicles
        "vehicles/wheel_tractor.png",
        "military/vehicles/ww2_german_gun.png",  # a towed gun
    }
)

# clipart: class -> glob patterns relative to /usr/share/openclipart/png.
CLIPART_GLOBS = {
    "mammal": ("animals/mammals/**/*.png",),
    "bird": ("animals/birds/**/*.png",),
    "insect": ("animals/bugs/*.png",),
    "fish": ("animals/fish/*.png",),
    "fruit": ("food/fruit/*.png",),
    "vegetable": (
        "food/vegetables/*.png",
        "food/pomodori_*.png",
        "food/pumpkin*.png",
        "food/zucca_*.png",
        "food/champignon_*.png",
    ),
    "flower": ("plants/flowers/*.png",),
    "vehicle": (
        "transportation/vehicles/**/*.png",
        "transportation/boating/boat_*.png",
        "transportation/boating/sailboat_illustration.png",
    ),
    "musical instrument": tuple(
        f"recreation/music/{stem}*.png"
        for stem in (
            "africandrum",
            "bass_guitar",
            "cello",
            "derbouk",
            "djambf",
            "drums",
            "electric_guitar",
            "flute",
            "french_horn",
            "guitar",
            "harp",
            "maracas",
            "mountain_dulcimer",
            "oboe",
            "piano_geraint",
            "piano_keys",
            "saxophone",
            "tenor_trombone",
            "tpt_",
            "trumpet",
            "violin",
            "war_drum",
            "xylophone",
        )
    ),
}
CLIPART_EXCLUDE = frozenset(
    {
        "animals/mammals/emule_icon_emule.org_01.png",  # a software logo
        "animals/mammals/horses/mechorse.png",  # a mechanical horse
        "animals/birds/contour_bat.png",  # a bat (a mammal; also filed under mammals)
        "animals/birds/wing_mitchell_johnson_si_.png",  # an aircraft wing
        "animals/birds/turkey_on_platter_01.png",  # a roast
        "animals/birds/dove_symbol.png",  # renders as "Linked Image Not Found"
        "animals/birds/mirjam_meijer_mirjam_mei_01.png",  # a flower (filed under flowers too)
        "animals/birds/baby-tux_alex_kuehne_01.png",  # the Linux mascot, not a bird drawing
        "animals/birds/baby_tux_01.png",
        "animals/birds/baby_tux_rory_mccann_01.png",
        "animals/birds/ninja_tux_rory_mccann_01.png",
        "animals/birds/penguin/plush_tux_anita_01.png",
        "animals/birds/penguin/tux_clemente_01.png",
        "animals/birds/penguin/tux_didier_fabert_01.png",
        "animals/bugs/lumaca_architetto_france_01.png",  # snails
        "animals/bugs/lumaca_turbo_architetto__01.png",
        "animals/bugs/ragnetto_incazzato_archi_01.png",  # spiders
        "animals/bugs/ragno_figo_architetto_fr_01.png",
        "animals/bugs/spider.png",
        "animals/bugs/virus_andreas_nilsson_01.png",  # a virus
        "animals/bugs/mostriciattolo_architett_01.png",  # little monsters
        "animals/bugs/mostriciattolo2_architet_01.png",
        "animals/fish/amibe_renardjb_on_free.f_01.png",  # amoebae
        "animals/fish/amibe_renardjb_on_free.f_02.png",
        "animals/fish/bluewhale-md.png",  # whales and dolphins are mammals
        "animals/fish/dolphin.png",
        "animals/fish/dolphin_01.png",
        "animals/fish/dolphin_enrique_meza_c_01.png",
        "animals/fish/dolphin_enrique_meza_c_02.png",
        "animals/fish/orca_matthew_gates_r.png",
        "animals/fish/crawfish1_bw_ganson.png",  # crustaceans
        "animals/fish/crawfish1_ganson.png",
        "animals/fish/crawfish2_bw_ganson.png",
        "animals/fish/crawfish2_ganson.png",
        "animals/fish/kallisti-grenade_1_nurbl_01.png",  # a grenade
        "animals/fish/paesaggio_marino_archite_01.png",  # a seascape
        "food/fruit/apple_juice_box.png",  # drinks and dishes made of fruit
        "food/fruit/apple_juice_box_bw.png",
        "food/fruit/juice_glass_andremarcel._01.png",
        "food/fruit/candied_apples_ganson.png",
        "food/fruit/pie_apple.png",
        "food/fruit/pie_apple_bw.png",
        "food/fruit/pie_cherry.png",
        "food/fruit/pie_cherry_bw.png",
        "food/fruit/turkey_platter_01_with_fruit_and_vegitables_01.png",
        "food/fruit/champignon_01.png",  # a mushroom: vegetable (taken from food/ instead)
        "food/fruit/gumnut_black_01.png",  # eucalyptus nuts
        "food/fruit/gumnut_shaded_01.png",
        "food/fruit/kallisti-grenade_1_nurbl_01.png",  # a grenade
        "food/fruit/straw_tote_linda_kim_01.png",  # a bag
        "food/fruit/tree_whit_fruits_01.png",  # a tree
        "food/fruit/tile_orange_gabriel_lo_i_01.png",  # a tile pattern
        "plants/flowers/cactus_linda_kim_01.png",  # not flowers
        "plants/flowers/cartoon_tree_01.png",
        "transportation/vehicles/crossroads.png",  # road signs and places
        "transportation/vehicles/curve_ahead.png",
        "transportation/vehicles/cycle_lane.png",
        "transportation/vehicles/cycle_route.png",
        "transportation/vehicles/departing_plane_01.png",
        "transportation/vehicles/bus_symbol_black_01.png",
        "transportation/vehicles/parking_romus_01.png",
        "transportation/vehicles/quay_sign_01.png",
        "transportation/vehicles/lighthouse_01.png",
        "transportation/vehicles/road_runner_ganson.png",  # a cartoon bird
        "transportation/vehicles/wing_mitchell_johnson_si_.png",  # a wing
        "transportation/vehicles/toy_paper_plane_01.png",  # a paper toy
        "recreation/music/piano_theory__ganson.png",  # music theory charts
        "recreation/music/piano_theory_ganson1.png",
    }
)

# emoji: class -> emoji-datasource subcategories; names excluded and names moved between classes.
EMOJI_SUBCATEGORIES = {
    "mammal": ("animal-mammal",),
    "bird": ("animal-bird",),
    "insect": ("animal-bug",),
    "fish": ("animal-marine",),
    "fruit": ("food-fruit",),
    "vegetable": ("food-vegetable",),
    "flower": ("plant-flower",),
    "vehicle": ("transport-ground", "transport-water", "transport-air"),
    "musical instrument": ("musical-instrument",),
}
EMOJI_EXCLUDE = frozenset(
    {
        "feet",
        "pig_nose",
        "unicorn_face",  # paw prints, a snout, a fictional animal
        "feather",
        "wing",
        "phoenix",  # parts of birds, a mythical bird
        "snail",
        "spider",
        "spider_web",
        "scorpion",
        "microbe",
        "worm",  # not insects
        "whale2",
        "whale",
        "dolphin",
        "seal",
        "octopus",
        "squid",
        "shell",
        "oyster",
        "crab",
        "shrimp",
        "lobster",
        "coral",
        "jellyfish",  # marine animals that are not fish
        "chestnut",
        "peanuts",  # nuts
        "rosette",  # a decoration
        # transport subcategories: places, signs, equipment and wheeled aids, not vehicles
        "station",
        "busstop",
        "traffic_light",
        "vertical_traffic_light",
        "construction",
        "rotating_light",
        "octagonal_sign",
        "wheel",
        "oil_drum",
        "motorway",
        "railway_track",
        "skateboard",
        "roller_skate",
        "motorized_wheelchair",
        "manual_wheelchair",
        "fuelpump",
        "ring_buoy",
        "anchor",
        "seat",
        "airplane_departure",
        "airplane_arriving",
        "satellite",
        "parachute",
        "flying_saucer",
    }
)
EMOJI_MOVE = {"tomato": "vegetable", "avocado": "fruit"}  # culinary sense, as the other sources file them
EMOJI_CELL = 32  # pixels of one emoji in the sheet; cells are padded by 1 pixel on each side


def _photo_files() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for cls in CLASSES:
        for path in tuxpaint_photos(PHOTO_FOLDERS[cls]):
            if path.relative_to(TUXPAINT_STAMPS).as_posix() not in PHOTO_EXCLUDE:
                found.append((cls, path))
    return found


def _clipart_files() -> list[tuple[str, Path]]:
    """Candidate files per class (before removing byte-identical copies, done when building)."""
    if not OPENCLIPART.is_dir():
        raise EdgeRuntimeError(f"{OPENCLIPART} not found: apt-get install openclipart-png (make setup does)")
    found: list[tuple[str, Path]] = []
    for cls in CLASSES:
        paths = sorted({p for pattern in CLIPART_GLOBS[cls] for p in OPENCLIPART.glob(pattern)})
        found.extend((cls, p) for p in paths if p.relative_to(OPENCLIPART).as_posix() not in CLIPART_EXCLUDE)
    return found


def _distinct(files: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """Keep the first of byte-identical files (openclipart files some drawings twice)."""
    seen: set[str] = set()
    kept = []
    for cls, path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            kept.append((cls, path))
    return kept


def _file_source(name: str, files: list[tuple[str, Path]], root: Path, table: object) -> DomainSource:
    version = fingerprint(
        name, FORMAT, OBJECT_SIDE, OBJECT_FILL, GREY, table, [c for c, _ in files], listing([p for _, p in files], root)
    )

    def build():
        kept = _distinct(files)
        images = [frame_object(read_png(p, max_side=2 * OBJECT_SIDE)) for _, p in kept]
        labels = [CLASSES.index(c) for c, _ in kept]
        return images, labels, CLASSES, [p.relative_to(root).as_posix() for _, p in kept]

    return DomainSource(name, version, build)


def photo_source() -> DomainSource:
    """Tux Paint photo stamps of the nine classes (cartoon folders excluded: they are drawings)."""
    return _file_source("photo", _photo_files(), TUXPAINT_STAMPS, (PHOTO_FOLDERS, sorted(PHOTO_EXCLUDE)))


def clipart_source() -> DomainSource:
    """openclipart drawings of the nine classes, decoded reduced."""
    return _file_source("clipart", _clipart_files(), OPENCLIPART, (CLIPART_GLOBS, sorted(CLIPART_EXCLUDE)))


def load_photo() -> Domain:
    return photo_source().load()


def load_clipart() -> Domain:
    return clipart_source().load()


def _emoji_entries(root: Path) -> list[tuple[str, dict]]:
    entries = json.loads((root / "emoji.json").read_text())
    by_sub = {sub: cls for cls, subs in EMOJI_SUBCATEGORIES.items() for sub in subs}
    chosen = []
    for entry in entries:
        name = entry["short_name"]
        cls = EMOJI_MOVE.get(name, by_sub.get(entry["subcategory"]))
        if cls is None or name in EMOJI_EXCLUDE or not entry.get("has_img_google"):
            continue
        chosen.append((cls, entry))
    return sorted(chosen, key=lambda ce: (CLASSES.index(ce[0]), ce[1]["sort_order"]))


def emoji_source(root: Path = EMOJI_DATASOURCE) -> DomainSource:
    """Google (Noto) emoji of the nine classes, cut from the 32-pixel sheet."""
    sheet_path = root / "img" / "google" / "sheets" / f"{EMOJI_CELL}.png"
    if not sheet_path.is_file():
        raise EdgeRuntimeError(f"{sheet_path} not found: npm install emoji-datasource into .data/npm (make setup does)")
    chosen = _emoji_entries(root)
    package_version = json.loads((root / "package.json").read_text())["version"]
    version = fingerprint(
        "emoji",
        FORMAT,
        OBJECT_SIDE,
        OBJECT_FILL,
        GREY,
        package_version,
        (EMOJI_SUBCATEGORIES, sorted(EMOJI_EXCLUDE), EMOJI_MOVE),
        [(c, e["short_name"], e["sheet_x"], e["sheet_y"]) for c, e in chosen],
        listing([sheet_path], root),
    )

    def build():
        sheet = cv2.imread(str(sheet_path), cv2.IMREAD_UNCHANGED)
        pitch = EMOJI_CELL + 2
        images = []
        for _, entry in chosen:
            x, y = entry["sheet_x"] * pitch + 1, entry["sheet_y"] * pitch + 1
            images.append(frame_object(np.ascontiguousarray(sheet[y : y + EMOJI_CELL, x : x + EMOJI_CELL])))
        labels = [CLASSES.index(c) for c, _ in chosen]
        return images, labels, CLASSES, [e["short_name"] for _, e in chosen]

    return DomainSource("emoji", version, build)


def load_emoji() -> Domain:
    return emoji_source().load()
