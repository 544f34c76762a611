"""What every run records about itself: package versions, git commit, time."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mfllm.redaction import redacted

TRACKED_PACKAGES = ("mfllm", "torch", "transformers", "peft", "trl", "numpy", "scipy", "pydantic", "httpx")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the mfllm source checkout, when it is one."""
    where = path or Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def base_manifest(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """What every manifest records; credentials in the config (a key in a model URL) are redacted."""
    return {
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": redacted(config),
        "seed": config.get("seed"),
        "versions": package_versions(),
        "git_commit": git_commit(),
    }


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 31-bit seed for one model call, from the run seed and the call's coordinates."""
    digest = hashlib.sha256(repr((seed, *parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
