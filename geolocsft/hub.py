"""`models pull`: fetch a catalog build from a Hugging Face–style hub into a model folder.

Downloads go to `<models_dir>/.partial/<name>/` through huggingface_hub, which resumes an
interrupted file from its `.incomplete` part; each file's sha256 is checked against the
repository's LFS record (and the catalog's pin when set) before the folder is assembled and
renamed into place. A failed check deletes the bad file so the next pull starts it afresh.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from geolocsft import images
from geolocsft.catalog import CatalogEntry, CatalogError, import_model, plain_folder_name
from geolocsft.manifest import sha256_file
from geolocsft.netfail import describe, kind
from geolocsft.paths import models_dir


class PullError(RuntimeError):
    """A pull that could not finish; the message says what and how to retry."""


_COMMIT = re.compile(r"[0-9a-f]{40}")


def _repo_files(api, entry: CatalogEntry) -> tuple[str | None, dict[str, tuple[str | None, int | None]]]:
    """(the commit the entry's revision resolves to now, {file name: (LFS sha256, size)})."""
    info = api.model_info(entry.repo, revision=entry.revision, files_metadata=True,
                          timeout=pull_timeout())
    files = {}
    for sibling in info.siblings or []:
        lfs = getattr(sibling, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        files[sibling.rfilename] = (sha, getattr(sibling, "size", None))
    commit = getattr(info, "sha", None)
    return (commit if isinstance(commit, str) and _COMMIT.fullmatch(commit) else None), files


def pull_timeout() -> float:
    """Seconds to wait for the hub to answer (GEOLOCSFT_PULL_TIMEOUT, default 20): a silent
    server or a captive portal must end in a message, not a wait without end."""
    try:
        return max(0.1, float(os.environ.get("GEOLOCSFT_PULL_TIMEOUT", "20")))
    except ValueError:
        return 20.0


def _offline_hint(entry: CatalogEntry) -> str:
    return (f"download {entry.repo} ({entry.model}, {entry.mmproj}) on a connected machine, "
            f"then `geolocsft models import MODEL.gguf MMPROJ.gguf --name {entry.name}`")


def pull(entry: CatalogEntry, *, root: str | os.PathLike | None = None,
         endpoint: str | None = None, token: str | None = None,
         progress: bool = True, warn: Callable[[str], None] | None = None) -> Path:
    """Fetch `entry` and return its finished model folder. Every failure is one PullError
    line saying what to do instead; a partial download is kept for the next pull to resume."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    plain_folder_name(entry.name, "catalog entry name")
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its retry notes would break the one-line rule
    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    root = Path(root) if root else models_dir()
    final = root / entry.name
    if final.exists():
        raise PullError(f"{final}: already installed (remove it to pull again)")
    token = token or os.environ.get("HF_TOKEN") or None
    api = HfApi(endpoint=endpoint, token=token)
    host = urlsplit(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").netloc
    partial = root / ".partial" / entry.name
    partial.mkdir(parents=True, exist_ok=True)
    commit = None
    try:
        commit, listing = _repo_files(api, entry)
        model_name, mmproj_name = entry.pick(sorted(listing))
        paths = {}
        for name, pin in ((model_name, entry.sha256_model), (mmproj_name, entry.sha256_mmproj)):
            # Both files from the one commit the listing came from, even if the branch moves.
            path = Path(hf_hub_download(
                entry.repo, name, revision=commit or entry.revision, local_dir=partial,
                endpoint=endpoint, token=token, etag_timeout=pull_timeout()))
            expected = pin or listing[name][0]
            if not expected:
                raise PullError(f"{entry.repo}/{name}: the hub gives no sha256 for it and the "
                                "catalog pins none; refusing an unverified file")
            actual = sha256_file(path)
            if actual != expected:
                path.unlink(missing_ok=True)
                raise PullError(f"{entry.repo}/{name}: sha256 {actual} does not match the "
                                f"expected {expected}; the file was deleted, pull again")
            paths[name] = path
    except PullError:
        raise
    except GatedRepoError:
        raise PullError(f"{entry.repo}: gated model; accept its licence on the hub and set "
                        "HF_TOKEN (or use --ask-token)") from None
    except RepositoryNotFoundError:
        raise PullError(f"{entry.repo}: repository not found (or private: set HF_TOKEN)") from None
    except CatalogError as exc:
        raise PullError(str(exc)) from None
    except Exception as exc:  # network failures come wrapped many ways: name them by kind
        what = describe(exc, host=host)
        kept = f"; the partial download in {partial} is kept" if any(partial.rglob("*")) else ""
        if kind(exc) in ("auth",):
            raise PullError(f"{entry.repo}: {what}; accept its licence on the hub and set "
                            "HF_TOKEN (or use --ask-token)") from None
        if kind(exc) == "not found":
            raise PullError(f"{entry.repo}: {what}; the catalog entry may be out of date "
                            f"(update geolocsft's catalog) or {_offline_hint(entry)}") from None
        if what:
            raise PullError(f"{entry.repo}: {what}{kept}; run the same pull again when "
                            f"connected to resume, or {_offline_hint(entry)}") from None
        if isinstance(exc, (HfHubHTTPError, OSError)):
            raise PullError(f"{entry.repo}: download failed ({str(exc).splitlines()[0][:200]})"
                            f"{kept}; run the same pull again to resume, or "
                            f"{_offline_hint(entry)}") from None
        raise
    source = f"{entry.repo}@{entry.revision}" + (f" (commit {commit})" if commit else "")
    folder = import_model(
        paths[model_name], paths[mmproj_name], name=entry.name, root=root, family=entry.family,
        base_model=entry.base_model, budget=images.default_budget(entry.family), move=True,
        notes=[f"pulled from {source}: {model_name}, {mmproj_name}"],
        source={"repo": entry.repo, "revision": entry.revision, "commit": commit,
                "files": [model_name, mmproj_name]})
    shutil.rmtree(partial, ignore_errors=True)
    if not _COMMIT.fullmatch(entry.revision) and warn:
        warn(f"{entry.name}: the catalog follows the moving revision {entry.revision!r}; "
             f"pulled its current commit {commit or '(unknown)'}, recorded in the manifest")
    return folder
