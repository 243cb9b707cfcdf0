"""The labels file of an NVlabs `dataset_tool.py` folder or zip, read by `dgan data make`.

`dataset.json` at the source's root: `{"labels": [["00000/img00000000.png", 6], ...]}`, or
`{"labels": null}` for an unlabelled dataset. dgan takes class indices (ints >= 0) only; the
float label vectors dataset_tool also allows are not classes and are refused.
"""

from __future__ import annotations

import json

DATASET_JSON = "dataset.json"


class DatasetJsonError(ValueError):
    """A dataset.json that does not label the source's pictures one to one; names the entry."""


def parse_dataset_json(text: str | bytes, where: str, pictures: list[str]
                       ) -> dict[str, int] | None:
    """{picture name: class} from dataset_tool's `{"labels": [[name, class], ...]}` (None
    for `"labels": null`), checked one to one against `pictures`; `where` names the file."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetJsonError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("labels", 0), (list, type(None))):
        raise DatasetJsonError(f'{where}: expected {{"labels": [["00000/img00000000.png", 6], '
                               f'...]}} or {{"labels": null}}')
    if doc["labels"] is None:
        return None
    known, labels, seen = set(pictures), {}, {}
    for i, entry in enumerate(doc["labels"]):
        ok = (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
              and type(entry[1]) is int and entry[1] >= 0)  # bool and float are not classes
        if not ok:
            raise DatasetJsonError(f"{where}: labels[{i}] {json.dumps(entry)[:120]}: expected "
                                   '["path/in/source.png", class index >= 0]')
        name = entry[0].removeprefix("./")
        if name in seen:
            raise DatasetJsonError(f"{where}: labels[{i}] names {name} again (labels[{seen[name]}]"
                                   " did)")
        if name not in known:
            raise DatasetJsonError(f"{where}: labels[{i}] names {name}, which is not a picture "
                                   "in the source")
        seen[name], labels[name] = i, entry[1]
    missing = [p for p in pictures if p not in labels]
    if missing:
        more = f" (and {len(missing) - 1} more pictures)" if len(missing) > 1 else ""
        raise DatasetJsonError(f"{where}: no entry in labels for {missing[0]}{more}")
    return labels
