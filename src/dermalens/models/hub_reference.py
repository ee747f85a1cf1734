"""`--model hf-hub:user/repo[@revision]`: a model package on the Hugging Face Hub, as a local folder.

Every command that takes a model resolves its argument here once
(`resolve_model_reference`): a Hub reference is downloaded into the Hugging
Face cache by huggingface_hub's `snapshot_download` (or found there: offline
the cache is used as it is), and the snapshot is then checked against the
package's SHA256SUMS before anything reads it. Anything else is a local path
and is returned unchanged, so the commands keep their own messages for a
missing file.

The `hf-hub:` prefix is the one timm and open_clip use for the same thing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .calibration_record import CheckpointError

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
MODEL_HELP = ("checkpoint (.ckpt), model package folder (dermalens package), exported model (.onnx), or a package "
              "on the Hugging Face Hub: hf-hub:user/repo[@revision]")


class HubModelError(CheckpointError):
    """A Hub model reference that is malformed, cannot be fetched, or does not match its checksums; one line."""


@dataclass(frozen=True)
class HubReference:
    repo_id: str
    revision: str | None = None     # a branch, tag or commit; None: the default branch

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def is_hub_reference(text: str | Path) -> bool:
    return isinstance(text, str) and text.startswith(HUB_PREFIX)


def parse_hub_reference(text: str) -> HubReference:
    """"hf-hub:user/repo@v1" -> HubReference("user/repo", "v1"); HubModelError naming what is wrong."""
    if not is_hub_reference(text):
        raise HubModelError(f"{text!r} is not a Hub reference (hf-hub:user/repo[@revision])")
    body = text[len(HUB_PREFIX):]
    repo_id, at, revision = body.partition("@")
    if at and not revision:
        raise HubModelError(f"{text}: nothing after '@'; give a branch, tag or commit, or leave '@' out")
    if repo_id.count("/") != 1:
        raise HubModelError(f"{text}: expected hf-hub:user/repo[@revision], got the repository id {repo_id!r}")
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        raise HubModelError(f"{text}: models on the Hugging Face Hub need huggingface_hub: "
                            f"pip install 'dermalens[hub]'") from None
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubModelError(f"{text}: not a valid repository id ({_one_line(error)})") from None
    return HubReference(repo_id, revision or None)


def check_hub_repo_id(repo_id: str) -> None:
    """HubModelError naming `repo_id` when it is not a Hub repository id (user-or-org/name; needs
    huggingface_hub): `package --push-to-hub` says so before a package is built for it, not after."""
    try:
        if "@" in repo_id:
            raise HubModelError("a revision (@...) is chosen when a model is loaded, not where it is uploaded")
        parse_hub_reference(f"{HUB_PREFIX}{repo_id}")
    except HubModelError as error:
        raise HubModelError(f"--push-to-hub {repo_id!r} is not a Hub repository id (user-or-org/name): "
                            f"{error}") from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def download_reference(reference: HubReference) -> Path:
    """The snapshot folder of `reference` in the Hugging Face cache, downloaded first when online."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .hub import hub_offline_if_unreachable

    offline = hub_offline_if_unreachable()   # no network: the cache at once, not a minute of retries
    try:
        folder = huggingface_hub.snapshot_download(repo_id=reference.repo_id, revision=reference.revision,
                                                   repo_type="model")
    except LocalEntryNotFoundError:
        why = "offline (HF_HUB_OFFLINE=1)" if offline or constants.HF_HUB_OFFLINE else "unreachable"
        raise HubModelError(f"{reference}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub is "
                            f"{why}; download it once while online, or pass a local folder") from None
    except GatedRepoError:
        raise HubModelError(f"{reference}: the repository is gated; accept its terms on the Hub and log in "
                            f"(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise HubModelError(f"{reference}: no such model repository on the Hub (or it is private: log in with "
                            f"`hf auth login` or HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HubModelError(f"{reference}: the repository has no revision {reference.revision!r}") from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise HubModelError(f"{reference}: download failed: {type(error).__name__}: {_one_line(error)}") from None
    if offline:
        log.info("%s: the Hub is offline; using the cached snapshot %s", reference, folder)
    return Path(folder)


def resolve_model_reference(text: str | Path) -> Path:
    """A command's --model as a local path: a Hub reference is fetched and checked, anything else kept as is.

    The snapshot must be a dermalens model package whose files match its
    SHA256SUMS (huggingface_hub checks its own transfer; this checks the
    package as it was written); HubModelError otherwise.
    """
    if not is_hub_reference(text):
        return Path(text)
    from .package_reader import PackageError, verify_package

    reference = parse_hub_reference(str(text))
    folder = download_reference(reference)
    try:
        verify_package(folder)
    except PackageError as error:
        raise HubModelError(f"{reference}: {_one_line(error)}") from None
    return folder
