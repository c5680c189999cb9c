"""`models pull`: fetch a catalog build from a Hugging Face–style hub into a model folder.

Downloads go to `<models_dir>/.partial/<name>/` through huggingface_hub, which resumes an
interrupted file from its `.incomplete` part; each file's sha256 is checked against the
repository's LFS record (and the catalog's pin when set) before the folder is assembled and
renamed into place. A failed check deletes the bad file so the next pull starts it afresh.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from geolocsft import images
from geolocsft.catalog import CatalogEntry, CatalogError, import_model
from geolocsft.manifest import sha256_file
from geolocsft.paths import models_dir


class PullError(RuntimeError):
    """A pull that could not finish; the message says what and how to retry."""


def _repo_files(api, entry: CatalogEntry) -> dict[str, tuple[str | None, int | None]]:
    """{file name: (LFS sha256, size)} of the repository at the entry's revision."""
    info = api.model_info(entry.repo, revision=entry.revision, files_metadata=True)
    files = {}
    for sibling in info.siblings or []:
        lfs = getattr(sibling, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        files[sibling.rfilename] = (sha, getattr(sibling, "size", None))
    return files


def pull(entry: CatalogEntry, *, root: str | os.PathLike | None = None,
         endpoint: str | None = None, token: str | None = None,
         progress: bool = True) -> Path:
    """Fetch `entry` and return its finished model folder."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    root = Path(root) if root else models_dir()
    final = root / entry.name
    if final.exists():
        raise PullError(f"{final}: already installed (remove it to pull again)")
    token = token or os.environ.get("HF_TOKEN") or None
    api = HfApi(endpoint=endpoint, token=token)
    partial = root / ".partial" / entry.name
    partial.mkdir(parents=True, exist_ok=True)
    try:
        listing = _repo_files(api, entry)
        model_name, mmproj_name = entry.pick(sorted(listing))
        paths = {}
        for name, pin in ((model_name, entry.sha256_model), (mmproj_name, entry.sha256_mmproj)):
            path = Path(hf_hub_download(
                entry.repo, name, revision=entry.revision, local_dir=partial,
                endpoint=endpoint, token=token))
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
    except GatedRepoError:
        raise PullError(f"{entry.repo}: gated model; accept its licence on the hub and set "
                        "HF_TOKEN (or pass --token)") from None
    except RepositoryNotFoundError:
        raise PullError(f"{entry.repo}: repository not found (or private: set HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        raise PullError(f"{entry.repo}: download failed ({exc}); run the same pull again to "
                        "resume") from None
    except OSError as exc:
        raise PullError(f"{entry.repo}: download interrupted ({exc}); run the same pull again "
                        "to resume") from None
    except CatalogError as exc:
        raise PullError(str(exc)) from None
    folder = import_model(
        paths[model_name], paths[mmproj_name], name=entry.name, root=root, family=entry.family,
        base_model=entry.base_model, budget=images.default_budget(entry.family), move=True,
        notes=[f"pulled from {entry.repo}@{entry.revision}: {model_name}, {mmproj_name}"])
    shutil.rmtree(partial, ignore_errors=True)
    return folder

