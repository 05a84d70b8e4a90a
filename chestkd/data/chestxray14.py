"""NIH ChestX-ray14 (Wang et al. 2017): 112,120 frontal radiographs, 30,805 patients,
14 findings mined from the reports, multi-label.

Files read from ``data_dir``:

* ``Data_Entry_2017.csv`` - one row per image. Both published forms are read: the 2017
  file (every line ends with an empty extra column) and the 2020 revision
  ``Data_Entry_2017_v2020.csv`` (corrected ages), also gzip-compressed. The bracketed
  headers ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]`` contain a
  comma, so they arrive as two columns each.
* ``train_val_list.txt`` / ``test_list.txt`` - the official patient-wise split.
* ``BBox_List_2017.csv`` - 984 hand-drawn boxes for 8 findings, in the pixel space of the
  1024 x 1024 release images (``Infiltrate`` there means ``Infiltration``).
* images under ``images/``, ``images_*/images/`` (the 12 official tarballs unpack as
  ``images_001/images`` ...) or the folders given as ``image_dirs``.

Only the metadata is needed: images that are not on disk are counted in ``meta["on_disk"]``
(``python -m chestkd.data describe`` reports them). The image folders are listed once and
intersected with the metadata's names (:mod:`chestkd.data.presence`), so a partial download
(two of the twelve archives beside all 112,120 rows) is recognised in seconds. Reading the
images (``check_images``, ``skip_bad_images``, every run) with absent ones is an error that
counts them and offers the two ways on: ``images="present"`` (the dataset is the images on
disk: the official lists, the patient split and the boxes are restricted to them) or
``skip_bad_images`` (the split of all rows, the absent ones skipped).

With ``cache_dir`` (a folder written by ``python -m chestkd.data prepare`` from this dataset)
no image file is touched: the image folders are not listed (112,120 entries, slow on a network
drive) but each image's path is rebuilt from the cache's index, ``meta["on_disk"]`` says whether
the cache holds the image, and boxes stay in the release's 1024 x 1024 space (their ``width`` and
``height`` columns say so, which is all the saliency code needs).
"""
from __future__ import annotations

import csv
import gzip
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.data import CHESTXRAY14_FINDINGS
from chestkd.data.dataset import Dataset, choose_labels
from chestkd.data.images import image_size_of, resolve_dir, screen_images
from chestkd.data.presence import check_images_option, keep_present, settle_absent
from chestkd.data.splits import check_fractions, check_no_leakage, patient_split
from chestkd.errors import ConfigError, DataError

METADATA_FILE = "Data_Entry_2017.csv"
METADATA_FALLBACKS = ("Data_Entry_2017.csv", "Data_Entry_2017.csv.gz",
                      "Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz")
BOX_FILES = ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
NO_FINDING = "No Finding"
LABEL_ALIASES = {"Infiltrate": "Infiltration"}
BOX_SPACE = 1024   # boxes were drawn on the 1024 x 1024 PNGs of the official release

# CSV header -> column name used here (the bracketed headers arrive split at their comma).
METADATA_COLUMNS = {
    "Image Index": "image", "Finding Labels": "findings", "Follow-up #": "follow_up",
    "Patient ID": "patient", "Patient Age": "age", "Patient Gender": "sex",
    "View Position": "view", "OriginalImage[Width": "original_width",
    "Height]": "original_height", "OriginalImagePixelSpacing[x": "spacing_x",
    "y]": "spacing_y",
}
REQUIRED_METADATA = ("Image Index", "Finding Labels", "Patient ID")
SPLIT_MODES = ("official", "patient")


def load_chestxray14(data_dir, *, split: str | None = None, seed: int = 0,
                     val_fraction: float = 0.1, fractions=(0.7, 0.1, 0.2), views=None,
                     labels=None, drop_other_findings: bool = False,
                     metadata: str = METADATA_FILE, train_val_list: str = TRAIN_VAL_LIST,
                     test_list: str = TEST_LIST, image_dirs=None,
                     skip_bad_images: bool = False, check_images: bool = False,
                     workers: int | None = None, cache_dir=None, images: str = "all",
                     verbose: bool = True) -> Dataset:
    """Load ChestX-ray14 as a multi-label :class:`Dataset`.

    Args:
        data_dir: the dataset folder.
        split: ``"official"``: test = ``test_list.txt``; train and val from
            ``train_val_list.txt`` with ``val_fraction`` of its images (whole patients,
            seeded) as val. Images in neither list are left out. ``"patient"``: a seeded
            patient-wise split of all images by ``fractions`` (train, val, test). None:
            ``official`` when both lists are in ``data_dir``, else ``patient`` (said in a
            printed line when ``verbose``).
        seed: seed of the patient shuffles.
        val_fraction: share of train_val images used for validation (official split).
        fractions: (train, val, test) image shares for the patient split.
        views: keep only these view positions, e.g. ``["PA"]`` or ``["PA", "AP"]``.
        labels: the findings to classify (a subset of ``CHESTXRAY14_FINDINGS``, e.g.
            ``CHESTXRAY8_FINDINGS``), in the order given. Default: all 14.
        drop_other_findings: with ``labels``, also drop the images whose findings all lie
            outside ``labels`` (they would otherwise be all-negative, like "No Finding").
        metadata: metadata file name (relative to ``data_dir``) or path. If the default is
            absent, ``.csv.gz`` and the ``_v2020`` revision are looked for.
        train_val_list, test_list: the official split lists (names or paths).
        image_dirs: extra image folders, searched before the standard ones.
        skip_bad_images: verify the images, drop bad ones into ``Dataset.skipped``
            (absent ones too, with the reason ``presence.ABSENT_REASON``).
        check_images: verify the images; absent images are one DataError saying how many
            (module doc), else the first bad one is.
        workers: threads for the image check.
        cache_dir: a prepared cache of this dataset: paths come from its index and no image
            file is listed or opened (see the module doc).
        images: ``"all"`` (every listed image is expected on disk) or ``"present"`` (only
            the images on disk, before the split; see the module doc).

    Labels are multi-hot in ``CHESTXRAY14_FINDINGS`` order; "No Finding" is all zeros.
    """
    root = resolve_dir(data_dir, "chestxray14")
    check_images_option(images, "chestxray14")
    if split is None:
        split = default_split(root, train_val_list, test_list)
        if verbose and split == "patient":
            print(f"chestxray14: the official lists {train_val_list} and {test_list} are "
                  f"not both in {root}: a seeded patient-wise split (split=patient, "
                  f"fractions {tuple(fractions)})")
    if split not in SPLIT_MODES:
        raise ConfigError(f"chestxray14: unknown split {split!r}; choose one of {SPLIT_MODES}")
    class_names = _class_names(labels)
    view_filter = _views(views)

    metadata_path = find_metadata(root, metadata)
    frame = read_metadata(metadata_path)
    multi_hot = parse_findings(frame, metadata_path)
    listed = len(frame)
    if cache_dir is None:
        folders = image_folders(root, image_dirs)
        all_paths, all_on_disk = locate_images(root, frame["image"], image_dirs, folders)
        where = ", ".join(map(str, folders)) or f"{root / 'images'} (no image folder)"
    else:
        all_paths, all_on_disk = cached_locations(root, frame["image"], cache_dir)
        where = f"the prepared cache {cache_dir}"

    in_list = (official_lists(root, frame, train_val_list, test_list)
               if split == "official" else None)
    keep = np.ones(len(frame), dtype=bool)
    if view_filter is not None:
        if "view" not in frame:
            raise DataError(f"{metadata_path}: views={list(view_filter)} needs the column "
                            f"'View Position', which this file lacks")
        keep &= frame["view"].str.upper().isin(view_filter).to_numpy()
        if not keep.any():
            present = sorted(frame["view"].unique())
            raise DataError(f"{metadata_path}: no image has a View Position in "
                            f"{list(view_filter)} (views present: {present})")
    columns = [CHESTXRAY14_FINDINGS.index(name) for name in class_names]
    if drop_other_findings:
        no_finding = multi_hot.sum(1) == 0
        keep &= no_finding | (multi_hot[:, columns].sum(1) > 0)
    if split == "official":
        keep &= in_list != ""
        if not keep.any():
            raise DataError(f"chestxray14: no image of {metadata_path} is in "
                            f"{train_val_list} or {test_list} (after the view/label filters)")
    excluded = {}
    if images == "present":
        keep = keep_present(keep, all_on_disk, excluded, dataset="chestxray14", where=where,
                            listed=f"listed in {metadata_path.name} (after the filters)")

    frame = frame[keep].reset_index(drop=True)
    multi_hot = multi_hot[keep][:, columns]
    patients = frame["patient"].to_numpy(dtype=str)
    if split == "official":
        split_names = carve_validation(in_list[keep], patients, val_fraction, seed)
    else:
        split_names = patient_split(patients, check_fractions(fractions), seed)

    paths, on_disk = all_paths[keep], all_on_disk[keep]
    data = Dataset(name="chestxray14", class_names=list(class_names), multi_label=True,
                   paths=paths, labels=multi_hot, patients=patients, split=split_names,
                   meta=_meta(frame, on_disk), root=root, excluded=excluded, listed=listed)
    # absent images first: their message must not wait for anything else
    data = settle_absent(data, required=check_images, skip=skip_bad_images,
                         listed=f"listed in {metadata_path}", where=where)
    # boxes of the rows kept; with a cache no file is opened for its size
    readable = (data.meta["on_disk"].to_numpy(dtype=bool) if cache_dir is None
                else np.zeros(len(data), dtype=bool))
    data.boxes = read_boxes_for(root, data.meta["image"], data.paths, readable, class_names)
    return screen_images(data, check_images=check_images, skip_bad_images=skip_bad_images,
                         workers=workers)


def default_split(root: Path, train_val_list: str = TRAIN_VAL_LIST,
                  test_list: str = TEST_LIST) -> str:
    """``official`` when both official lists exist, else ``patient``."""
    lists = [Path(name).expanduser() for name in (train_val_list, test_list)]
    found = all((path if path.is_absolute() else root / path).is_file() for path in lists)
    return "official" if found else "patient"


# ---------------------------------------------------------------------------- options

def _class_names(labels) -> tuple[str, ...]:
    return tuple(choose_labels(labels, CHESTXRAY14_FINDINGS, dataset="chestxray14",
                               aliases=LABEL_ALIASES))


def _views(views):
    if views is None:
        return None
    names = [views] if isinstance(views, str) else list(views)
    if not names:
        raise ConfigError("chestxray14: views option is empty; give e.g. ['PA'] or ['PA', 'AP']")
    return tuple(str(view).strip().upper() for view in names)


# ---------------------------------------------------------------------------- metadata

def find_metadata(root: Path, metadata: str) -> Path:
    """The metadata file: ``metadata`` itself, its ``.gz``, or (default name) the 2020 revision."""
    given = Path(metadata).expanduser()
    candidates = [given, Path(f"{given}.gz")]
    if str(metadata) == METADATA_FILE:
        candidates += [Path(name) for name in METADATA_FALLBACKS]
    for candidate in candidates:
        path = candidate if candidate.is_absolute() else root / candidate
        if path.is_file():
            return path
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise DataError(f"chestxray14: no metadata file in {root} (looked for {looked})")


def read_csv_text(path: Path, what: str) -> pd.DataFrame:
    """A CSV as strings (empty cells are ''), header names stripped, and ``line``: each row's
    first line in the file (the header is line 1; blank lines and line breaks inside quoted
    cells are counted, blank rows left out, so an error names the line an editor shows);
    DataError if unreadable.

    ``index_col=False`` keeps pandas from turning the first column into the index when the
    lines carry a trailing comma that the header lacks.
    """
    try:
        with warnings.catch_warnings():
            # "Length of header ... does not match": only the empty trailing field is lost.
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False,
                                skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the {what} file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read the {what} file ({error})") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    empty_extra = [column for column in frame.columns
                   if (column == "" or column.startswith("Unnamed:"))
                   and (frame[column].str.strip() == "").all()]
    frame = frame.drop(columns=empty_extra)
    frame["line"] = _record_lines(path, len(frame))
    blank = (frame.drop(columns="line") == "").all(axis=1)
    return frame[~blank].reset_index(drop=True)


def _record_lines(path: Path, rows: int) -> np.ndarray:
    """The line on which each of the ``rows`` data rows starts (the header is line 1).

    One row is one line unless a quoted cell holds a line break; then the rows below it start
    further down, and the csv module, which reads quotes as pandas does, counts them.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    if '"' not in text:
        return np.arange(2, rows + 2)
    reader, starts, end = csv.reader(io.StringIO(text, newline="")), [], 0
    for _ in reader:
        starts.append(end + 1)
        end = reader.line_num
    if len(starts) - 1 != rows:      # read otherwise than pandas did: one row, one line
        return np.arange(2, rows + 2)
    return np.asarray(starts[1:])


def read_metadata(path: Path) -> pd.DataFrame:
    """``Data_Entry_2017*.csv`` -> table with the columns of ``METADATA_COLUMNS`` that exist,
    plus ``line`` (1-based line number in the file, for error messages)."""
    frame = read_csv_text(path, "metadata")
    missing = [column for column in REQUIRED_METADATA if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the columns found are "
                        f"{list(frame.columns)}")
    lines = frame["line"].to_numpy()
    frame = frame[[c for c in METADATA_COLUMNS if c in frame.columns]].rename(
        columns=METADATA_COLUMNS)
    for column in ("image", "findings", "patient", "sex", "view"):
        if column in frame:
            frame[column] = _per_distinct(frame[column], lambda cells: cells.str.strip())
    frame["line"] = lines
    if len(frame) == 0:
        raise DataError(f"{path}: the metadata file has a header but no rows")
    _check_cells(frame, path, "image", "Image Index")
    _check_cells(frame, path, "patient", "Patient ID")
    duplicated = frame["image"].duplicated(keep=False)
    if duplicated.any():
        rows = frame[duplicated]
        first = rows["image"].iloc[0]
        lines = rows.loc[rows["image"] == first, "line"].tolist()
        raise DataError(f"{path}: image {first!r} is listed more than once (lines {lines})")
    # Patient ids are integers in the file; "00012" and "12" are the same patient.
    frame["patient"] = _per_distinct(frame["patient"], _integer_ids)
    # Ages written with a unit (e.g. "058Y", as in the Kaggle sample file) keep their digits.
    for column in ("age", "follow_up", "original_width", "original_height"):
        if column in frame:
            frame[column] = _per_distinct(frame[column], _integers)
    for column in ("spacing_x", "spacing_y"):
        if column in frame:
            frame[column] = _per_distinct(
                frame[column], lambda cells: pd.to_numeric(cells, errors="coerce"))
    return frame


def _per_distinct(column: pd.Series, convert) -> pd.Series:
    """``convert`` applied to each distinct cell once (112,120 rows hold ~30,000 patients,
    ~100 ages, 2 views): the metadata of a partial download is read in about a second."""
    codes, distinct = pd.factorize(column, use_na_sentinel=False)
    converted = convert(pd.Series(np.asarray(distinct, dtype=object), dtype=object))
    return pd.Series(np.asarray(converted)[codes], index=column.index)


def _integer_ids(cells: pd.Series) -> pd.Series:
    """Patient ids: integer cells without their leading zeros, other cells as they are."""
    numeric = pd.to_numeric(cells, errors="coerce")
    as_int = numeric.dropna().astype(np.int64).astype(str)
    cells = cells.copy()
    cells.loc[as_int.index] = as_int
    return cells


def _integers(column: pd.Series) -> pd.Series:
    """Integer cells; cells with a unit such as "058Y" keep their digits (NaN if none)."""
    numbers = pd.to_numeric(column, errors="coerce")
    odd = numbers.isna() & (column != "")
    if odd.any():
        numbers[odd] = pd.to_numeric(column[odd].str.extract(r"(\d+)", expand=False),
                                     errors="coerce")
    return numbers


def _check_cells(frame, path, column, header) -> None:
    empty = frame[column] == ""
    if empty.any():
        line = int(frame.loc[empty, "line"].iloc[0])
        raise DataError(f"{path}, line {line}: empty '{header}'")


def parse_findings(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """'Finding Labels' (``A|B``, or ``No Finding``) -> (N, 14) float32 multi-hot.

    An unknown label is a DataError naming the file, the line and the label.
    """
    _check_cells(frame, path, "findings", "Finding Labels")
    # 112,120 rows hold only ~800 distinct label strings: parse each string once.
    codes, distinct = pd.factorize(frame["findings"])
    distinct = pd.Series(distinct, dtype=str).str.replace(r"\s*\|\s*", "|", regex=True)
    dummies = distinct.str.get_dummies("|")
    for alias, name in LABEL_ALIASES.items():
        if alias in dummies:
            dummies[name] = dummies[alias] | dummies.get(name, 0)
            dummies = dummies.drop(columns=alias)
    known = set(CHESTXRAY14_FINDINGS) | {NO_FINDING}
    unknown = [label for label in dummies.columns if label not in known]
    if unknown:
        label = unknown[0]
        distinct_row = np.flatnonzero(dummies[label].to_numpy())
        row = int(np.flatnonzero(np.isin(codes, distinct_row))[0])
        raise DataError(
            f"{path}, line {frame['line'].iloc[row]}: unknown label {label!r} in 'Finding "
            f"Labels' of image {frame['image'].iloc[row]!r}; known labels are "
            f"{list(CHESTXRAY14_FINDINGS) + [NO_FINDING]}")
    table = dummies.reindex(columns=list(CHESTXRAY14_FINDINGS), fill_value=0).to_numpy(
        dtype=np.float32)
    return table[codes]


# ---------------------------------------------------------------------------- splits

def read_list(path: Path) -> list[str]:
    """Image names of a split list, one per line (blank lines ignored)."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def official_lists(root: Path, frame: pd.DataFrame, train_val_list: str,
                   test_list: str) -> np.ndarray:
    """Per row: ``"train_val"``, ``"test"`` or ``""`` (in neither list).

    DataError if a list is missing (suggesting ``split="patient"``), if an image is in both
    lists, or if a patient has images in both (that would leak the patient into the test).
    """
    paths = {}
    for option, name in (("train_val_list", train_val_list), ("test_list", test_list)):
        path = Path(name).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataError(f"chestxray14: split='official' needs the official list {path} "
                            f"({option}), which is missing; use split='patient' (--split patient) "
                            f"for a seeded patient-wise split instead")
        paths[option] = path
    train_val = set(read_list(paths["train_val_list"]))
    test = set(read_list(paths["test_list"]))
    both = sorted(train_val & test)
    if both:
        raise DataError(f"image {both[0]!r} is in both {paths['train_val_list']} and "
                        f"{paths['test_list']} ({len(both)} image(s) in both)")
    in_list = np.full(len(frame), "", dtype=object)
    in_list[frame["image"].isin(train_val).to_numpy()] = "train_val"
    in_list[frame["image"].isin(test).to_numpy()] = "test"
    listed = in_list != ""
    check_no_leakage(frame["patient"].to_numpy(dtype=str)[listed], in_list[listed],
                     f"{paths['train_val_list']} and {paths['test_list']}")
    return in_list.astype(str)


def carve_validation(in_list: np.ndarray, patients: np.ndarray, val_fraction: float,
                     seed: int) -> np.ndarray:
    """Official split: train_val images become train or val (whole patients, seeded)."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"chestxray14: val_fraction must be in [0, 1), got {val_fraction}")
    split = np.where(in_list == "test", "test", "train").astype("<U5")
    train_val = in_list == "train_val"
    if train_val.any():
        split[train_val] = patient_split(patients[train_val],
                                         (1.0 - val_fraction, val_fraction), seed,
                                         names=("train", "val"))
    return split


# ---------------------------------------------------------------------------- images, boxes

def image_folders(root: Path, image_dirs=None) -> list[Path]:
    """Folders searched for images, in order: ``image_dirs``, ``images/``, ``images_*/images/``."""
    folders = []
    for folder in ([image_dirs] if isinstance(image_dirs, (str, os.PathLike)) else
                   list(image_dirs or [])):
        folder = Path(folder).expanduser()
        folder = folder if folder.is_absolute() else root / folder
        if not folder.is_dir():
            raise DataError(f"chestxray14: image folder {folder} (image_dirs) does not exist")
        folders.append(folder)
    folders.append(root / "images")
    folders += sorted(root.glob("images_*/images"))
    return [folder for folder in folders if folder.is_dir()]


def locate_images(root: Path, names: pd.Series, image_dirs=None, folders=None):
    """(paths, on_disk): where each image is; absent images get their path under the first
    image folder (``images/`` when there is none) and ``on_disk=False``.

    Each folder is listed once (one ``os.scandir``) and its names are intersected with
    ``names``: no listed row is stat-ed or opened."""
    folders = image_folders(root, image_dirs) if folders is None else folders
    found: dict[str, str] = {}
    for folder in folders:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name not in found and entry.is_file():
                    found[entry.name] = entry.path
    default = str(folders[0] if folders else root / "images") + os.sep
    located = names.map(found)
    on_disk = located.notna().to_numpy()
    paths = np.where(on_disk, located.to_numpy(dtype=object),
                     (default + names).to_numpy(dtype=object)).astype(str)
    return paths, on_disk


def cached_locations(root: Path, names: pd.Series, cache_dir):
    """(paths, in_cache) like :func:`locate_images`, from a prepared cache's index.

    The index keys are paths relative to the dataset root (``images_001/images/x.png``), so
    ``root / key`` is where the image was when the cache was prepared; no folder is listed.
    Images the cache lacks get their path under ``images/`` and ``in_cache=False``.
    """
    from chestkd.data.cache import PreparedCache   # cache imports the dataset layer
    keys = PreparedCache(cache_dir).index["key"].astype(str)
    by_name = dict(zip(keys.map(os.path.basename), keys))
    located = names.map(by_name)
    in_cache = located.notna().to_numpy()
    keys = np.where(in_cache, located.to_numpy(dtype=object),
                    ("images" + os.sep + names).to_numpy(dtype=object))
    paths = np.array([os.path.normpath(os.path.join(root, key)) for key in keys], dtype=str)
    return paths, in_cache


def _meta(frame: pd.DataFrame, on_disk: np.ndarray) -> pd.DataFrame:
    columns = ["image", "follow_up", "age", "sex", "view", "original_width",
               "original_height", "spacing_x", "spacing_y"]
    meta = frame.reindex(columns=columns).copy()
    meta["on_disk"] = on_disk
    return meta


def read_boxes(path: Path) -> pd.DataFrame:
    """``BBox_List_2017.csv`` -> image, label, x, y, w, h (1024-space), line.

    The header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the four coordinates are
    the four columns after 'Finding Label'.
    """
    frame = read_csv_text(path, "box list")
    columns = list(frame.columns)
    missing = [c for c in ("Image Index", "Finding Label") if c not in columns]
    if missing or len(columns) < columns.index("Finding Label") + 5:
        raise DataError(f"{path}: missing column(s) {missing or ['Bbox [x,y,w,h]']}; expected "
                        f"'Image Index,Finding Label,Bbox [x,y,w,h]', found {columns}")
    start = columns.index("Finding Label") + 1
    boxes = pd.DataFrame({"image": frame["Image Index"].str.strip(),
                          "label": frame["Finding Label"].str.strip().replace(LABEL_ALIASES)})
    for offset, name in enumerate("xywh"):
        boxes[name] = pd.to_numeric(frame[columns[start + offset]], errors="coerce")
    boxes["line"] = frame["line"].to_numpy()
    bad = boxes[list("xywh")].isna().any(axis=1)
    if bad.any():
        raise DataError(f"{path}, line {boxes.loc[bad, 'line'].iloc[0]}: box coordinates "
                        f"x, y, w, h must be numbers")
    unknown = ~boxes["label"].isin(CHESTXRAY14_FINDINGS)
    if unknown.any():
        row = boxes[unknown].iloc[0]
        raise DataError(f"{path}, line {row['line']}: unknown label {row['label']!r} in "
                        f"'Finding Label'; known labels are {list(CHESTXRAY14_FINDINGS)}")
    return boxes


def read_boxes_for(root: Path, names: pd.Series, paths: np.ndarray, on_disk: np.ndarray,
                   class_names) -> pd.DataFrame | None:
    """Boxes of the loaded images and classes, scaled to each image's size on disk.

    ``x' = x * W / 1024`` and ``y' = y * H / 1024`` (same for w, h), with W x H read from the
    file. Images not on disk (or unreadable) keep the 1024-space; ``width``/``height`` say
    which space each box is in. None when the dataset has no box list.
    """
    box_path = next((root / name for name in BOX_FILES if (root / name).is_file()), None)
    if box_path is None:
        return None
    boxes = read_boxes(box_path)
    rows = pd.DataFrame({"image": names.to_numpy(dtype=str), "path": paths, "on_disk": on_disk})
    boxes = boxes.merge(rows, on="image", how="inner")
    boxes = boxes[boxes["label"].isin(list(class_names))].reset_index(drop=True)
    width = np.full(len(boxes), float(BOX_SPACE))
    height = np.full(len(boxes), float(BOX_SPACE))
    sizes = {}
    for path in boxes.loc[boxes["on_disk"], "path"].unique():
        try:
            sizes[path] = image_size_of(path)
        except DataError:
            continue          # unreadable image: its boxes stay in 1024-space
    for index, path in enumerate(boxes["path"]):
        if path in sizes:
            width[index], height[index] = sizes[path]
    boxes["x"] *= width / BOX_SPACE
    boxes["w"] *= width / BOX_SPACE
    boxes["y"] *= height / BOX_SPACE
    boxes["h"] *= height / BOX_SPACE
    boxes["width"] = width.astype(np.int64)
    boxes["height"] = height.astype(np.int64)
    return boxes[["image", "path", "label", "x", "y", "w", "h", "width", "height"]]
