"""Rebuild the bundled demo event from the shared Weibo COVID-19 data (user ids are hashed).

Usage: python scripts/make_demo_sample.py ../shared/data/weibo_covid19_rumor
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from mfllm.data.loaders import get_reader, write_generic

EVENT_ID = "4484800548711562"
OUT = Path(__file__).resolve().parents[1] / "src" / "mfllm" / "data" / "sample" / "weibo_covid19_sample.jsonl"


def pseudonym(user_id: str | None) -> str | None:
    return None if user_id is None else "u" + hashlib.sha256(user_id.encode()).hexdigest()[:12]


def main(root: str) -> None:
    event, report = get_reader(Path(root)).load_event(Path(root), EVENT_ID)
    anonymised = event.model_copy(update={
        "source": event.source.model_copy(update={"user": event.source.user.model_copy(update={"user_id": pseudonym(event.source.user.user_id)})}),
        "reactions": [r.model_copy(update={"user": r.user.model_copy(update={"user_id": pseudonym(r.user.user_id)})}) for r in event.reactions],
    })
    write_generic([anonymised], OUT)
    print(f"wrote {OUT}: {len(event.reactions)} reactions ({report.summary()})")


if __name__ == "__main__":
    main(sys.argv[1])
