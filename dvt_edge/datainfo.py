"""What a dataset spec resolves to (``python -m dvt_edge.data info``): each split's images and classes, counted from
a folder's file listing (nothing decoded), and the preprocessing ``data export`` would use by default."""

from __future__ import annotations

import json

import numpy as np

from dvt_edge import imageset as _imageset

SCHEMA = "dvt-edge/data-info/1"


def dataset_info(spec: str) -> dict:
    """Every split of ``spec``: its images, classes and images per class, or why it holds none; and the default
    preprocessing (``preprocess_sampled``: judged on a sample of a folder's images). A spec holding no split is a DataError."""
    from dvt_edge.data import SPLITS, DataError, SplitNotHeld, load_dataset

    splits, ds = {}, None
    for split in SPLITS:
        try:
            ds = load_dataset(spec, split, listed=True)  # an image folder counted from its listing
        except SplitNotHeld as e:  # an exported .npz holds one split
            splits[split] = {"held": False, "why": str(e)}
            continue
        splits[split] = {"held": True, "name": ds.name, "n": len(ds), "listed": isinstance(ds.images, list), "classes": list(ds.classes),
                         "counts": np.bincount(ds.labels, minlength=ds.num_classes).tolist()}
    if ds is None:
        raise DataError(f"{spec} holds none of the splits {list(SPLITS)}")
    return {"schema": SCHEMA, "schema_version": 1, "data": spec, "splits": splits, "preprocess": ds.preprocess.to_dict(),
            "preprocess_sampled": isinstance(ds.images, list)}


def print_info(spec: str, as_json: bool = False) -> None:
    """``dataset_info`` as JSON (``as_json``) or as lines for a reader."""
    info = dataset_info(spec)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    for split, s in info["splits"].items():
        if not s["held"]:
            print(f"{spec} [{split}]: none ({s['why']})")
            continue
        per = _imageset.class_counts(s["classes"], s["counts"])  # named: counts alone hid which was rare
        listed = " image files (listed: unreadable ones are left out when read)" if s["listed"] else " images"
        print(f"{s['name']} [{split}]: {s['n']}{listed}, {len(s['classes'])} classes ({per})")
    sample = ", judged on a sample of the images (data export judges every one it reads)" if info["preprocess_sampled"] else ""
    print(f"preprocess (data export's default without --checkpoint{sample}; train and export use the model's): {info['preprocess']}")
